//! Plugins as OCI artifacts, in the CNCF Wasm OCI artifact layout: a config
//! of media type `application/vnd.wasm.config.v0+json` (the component's
//! imports and exports) and one `application/wasm` layer, so wkg, Spin,
//! wasmCloud and oras read what runner pushes and runner reads theirs.
//!
//! - [`OciRef`], [`Digest`]: `oci://REGISTRY/REPOSITORY[:TAG][@sha256:…]`
//!   and validated digests (safe as file names).
//! - [`artifact`]: the config and manifest runner writes (reproducible: the
//!   same bytes always give the same manifest digest) and the checks on what
//!   it reads.
//! - [`RegistryClient`]: push and pull through `oci-client`, credentials
//!   from [`auth`], plain HTTP only for loopback or `--insecure-registry`.
//! - [`store`]: the content-addressed store pulled blobs live in, and
//!   bundles (a store plus precompiled artifacts, for CI images).
//! - [`lockfile`]: `runner.lock`, each reference pinned to its digest and
//!   the imports its component uses.
//! - [`signature`], [`keys`]: cosign-compatible signatures (simple signing
//!   with ECDSA P-256 keys), checked against the operator's trusted keys.
//! - [`resolve`]: from an `oci://` reference to verified bytes, through the
//!   lock, the bundles, the store and (only then) the registry.

pub mod artifact;
pub mod auth;
mod client;
pub mod keys;
pub mod lockfile;
pub mod resolve;
pub mod signature;
pub mod store;

pub use client::{Pulled, Pushed, RegistryClient};

use oci_spec::distribution::Reference;
use sha2::Digest as _;
use std::fmt;
use std::path::PathBuf;

/// How a registry reference is written where a plugin is named.
pub const SCHEME: &str = "oci://";

/// A sha256 content digest, `sha256:` and 64 lowercase hex digits. Checked
/// on parsing, so its hex is safe as a file name in a store.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Result<Self, OciError> {
        match text.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Ok(Self(text.to_string()))
            }
            _ => Err(OciError::BadDigest {
                text: text.chars().take(100).collect(),
            }),
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{:x}", sha2::Sha256::digest(bytes)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:` and the first 12 hex digits, for tables.
    pub fn short(&self) -> &str {
        &self.0[..("sha256:".len() + 12)]
    }
}

impl TryFrom<String> for Digest {
    type Error = OciError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> Self {
        digest.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plugin in a registry: `oci://REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST]`.
/// The registry is always named (no implicit Docker Hub): a pipeline says
/// where its code comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    reference: Reference,
    /// Set when written with `@sha256:…`.
    digest: Option<Digest>,
}

impl OciRef {
    /// Parse `text`, with or without the `oci://` scheme.
    pub fn parse(text: &str) -> Result<Self, OciError> {
        let bare = text.strip_prefix(SCHEME).unwrap_or(text);
        let bad = |reason: String| OciError::BadReference {
            text: text.chars().take(200).collect(),
            reason,
        };
        let first = bare.split('/').next().unwrap_or("");
        let names_registry = bare.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if !names_registry {
            return Err(bad(
                "it names no registry; write oci://REGISTRY/REPOSITORY:TAG, \
                 e.g. oci://127.0.0.1:5000/team/notify:1.2"
                    .into(),
            ));
        }
        if let Some((_, digest)) = bare.split_once('@')
            && Digest::parse(digest).is_err()
        {
            return Err(bad(
                "its digest is not sha256:<64 hex digits>; runner pins plugins by sha256".into(),
            ));
        }
        let parts = reference_grammar()
            .and_then(|g| g.captures(bare))
            .ok_or_else(|| {
                bad(
                    "it is not REGISTRY/REPOSITORY[:TAG][@DIGEST] with a lowercase repository \
                 (the distribution reference grammar)"
                        .into(),
                )
            })?;
        let name = parts.get(1).map(|m| m.as_str()).unwrap_or_default();
        let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
        if repository.len() > 255 {
            return Err(bad("its repository name is over 255 characters".into()));
        }
        let tag = parts.get(2).map(|m| m.as_str().to_string());
        let digest = parts
            .get(3)
            .map(|m| Digest::parse(m.as_str()))
            .transpose()?;
        // The parts checked are the parts sent: the Reference is built from them.
        let (registry, repository) = (registry.to_string(), repository.to_string());
        let reference = match (&tag, &digest) {
            (Some(tag), Some(digest)) => Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                digest.to_string(),
            ),
            (None, Some(digest)) => {
                Reference::with_digest(registry, repository, digest.to_string())
            }
            (Some(tag), None) => Reference::with_tag(registry, repository, tag.clone()),
            (None, None) => Reference::with_tag(registry, repository, "latest".into()),
        };
        Ok(Self { reference, digest })
    }

    pub fn registry(&self) -> &str {
        self.reference.registry()
    }

    pub fn repository(&self) -> &str {
        self.reference.repository()
    }

    pub fn tag(&self) -> Option<&str> {
        self.reference.tag()
    }

    /// The digest it was written with, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The last part of the repository: `notify` for `…/team/notify:1.2`.
    pub fn name(&self) -> &str {
        self.repository().rsplit('/').next().unwrap_or_default()
    }

    /// The same repository, pinned to `digest`.
    pub fn pinned(&self, digest: &Digest) -> Self {
        Self {
            reference: Reference::with_digest(
                self.registry().to_string(),
                self.repository().to_string(),
                digest.to_string(),
            ),
            digest: Some(digest.clone()),
        }
    }

    pub(crate) fn reference(&self) -> &Reference {
        &self.reference
    }
}

impl fmt::Display for OciRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry(), self.repository())?;
        if let Some(tag) = self.tag() {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The distribution reference grammar (distribution/reference's regexp, as
/// oci-spec has it) with `\w` as Go's RE2 reads it, ASCII, and only sha256
/// digests. oci-spec's own, Unicode-aware form takes ~20 ms to compile at
/// every start, more than loading a plugin.
fn reference_grammar() -> Option<&'static regex::Regex> {
    static GRAMMAR: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    GRAMMAR
        .get_or_init(|| {
            let component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
            let path = r"[a-z0-9]+(?:(?:[._]|__|-*)[a-z0-9]+)*";
            let pattern = format!(
                r"(?-u)^({component}(?:\.{component})*(?::[0-9]+)?/{path}(?:/{path})*)(?::([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}))?(?:@(sha256:[0-9a-f]{{64}}))?$"
            );
            regex::Regex::new(&pattern).ok()
        })
        .as_ref()
}

/// Whether `registry` (`host[:port]`) is on this machine: the only registries
/// spoken to over plain HTTP without `--insecure-registry`.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Everything that can go wrong between a reference and verified bytes.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("plugin reference \"{text}\" is not valid: {reason}")]
    BadReference { text: String, reason: String },
    #[error("\"{text}\" is not a sha256 digest (sha256:<64 lowercase hex digits>)")]
    BadDigest { text: String },
    #[error(
        "registry {registry} refused access{detail}; log in with `runner plugin login {registry}` \
         (or `docker login {registry}`), or set RUNNER_REGISTRY_HOST={registry} with RUNNER_REGISTRY_USERNAME and RUNNER_REGISTRY_PASSWORD"
    )]
    Auth { registry: String, detail: String },
    #[error(
        "cannot reach registry {registry}: {detail}; check the address, or pin the plugin in \
         runner.lock and bundle it (`runner plugin bundle`) to run without the registry"
    )]
    Unreachable { registry: String, detail: String },
    #[error("{reference} does not exist in its registry{detail}")]
    NotFound { reference: String, detail: String },
    #[error(
        "{reference} is not a runner plugin: {found}. A plugin is a Wasm OCI artifact \
         (config {}, one application/wasm layer), as `runner plugin push` writes",
        artifact::CONFIG_MEDIA_TYPE
    )]
    NotAPlugin { reference: String, found: String },
    #[error(
        "{what} does not match its digest: expected {expected}, the content hashes to {actual}; \
         nothing from it ran{hint}"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
        hint: String,
    },
    #[error("{what} does not match its digest ({detail}); nothing from it ran")]
    CorruptBlob { what: String, detail: String },
    #[error("{what} is {size} bytes, over runner's limit of {cap} bytes")]
    TooLarge { what: String, size: u64, cap: u64 },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error(
        "plain HTTP to registry {registry} is refused: it is not on this machine; serve it over HTTPS, or name it with --insecure-registry {registry}"
    )]
    Insecure { registry: String },
    #[error("plugin store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {detail}", path.display())]
    File { path: PathBuf, detail: String },
    #[error("{0}")]
    Locked(String),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("{plugin} is not signed by a trusted key: {detail}")]
    Unsigned { plugin: String, detail: String },
    #[error("cannot read docker credentials from {}: {detail}", path.display())]
    Credentials { path: PathBuf, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_their_registry_and_print_as_written() {
        let r = OciRef::parse("oci://127.0.0.1:5000/team/notify:1.2").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/notify");
        assert_eq!(r.tag(), Some("1.2"));
        assert_eq!(r.name(), "notify");
        assert_eq!(r.to_string(), "oci://127.0.0.1:5000/team/notify:1.2");
        let d = format!("sha256:{}", "ab".repeat(32));
        let pinned = OciRef::parse(&format!("oci://localhost:5000/notify@{d}")).unwrap();
        assert_eq!(pinned.digest().map(Digest::as_str), Some(d.as_str()));
        assert_eq!(
            r.pinned(pinned.digest().unwrap()).to_string(),
            format!("oci://127.0.0.1:5000/team/notify@{d}")
        );
        for bad in [
            "oci://team/notify:1.2",
            "oci://notify",
            "oci://127.0.0.1:5000/Team/x",
            "oci://127.0.0.1:5000/x@sha256:abc",
            "oci://127.0.0.1:5000/x@md5:00000000000000000000000000000000",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn the_grammar_agrees_with_oci_specs() {
        let d = format!("sha256:{}", "0".repeat(64));
        for text in [
            "127.0.0.1:5000/team/notify:1.2".to_string(),
            "registry.example.com/a/b/c".into(),
            "localhost:5000/a__b/c-d.e_f:v1.0-rc_1".into(),
            format!("r.io/x@{d}"),
            format!("r.io/x:t@{d}"),
            "r.io/UPPER:1".into(),
            "r.io/x:-bad".into(),
            "r.io/x:".into(),
            "r.io//x".into(),
            "-r.io/x".into(),
            "r.io/x/".into(),
            "r.io/x:1:2".into(),
            format!("r.io/x:{}", "t".repeat(129)),
        ] {
            let ours = reference_grammar().unwrap().is_match(&text);
            let theirs = text.parse::<Reference>().is_ok();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn digests_are_checked_before_they_become_file_names() {
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(64))).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}/", "0".repeat(63)),
            format!("sha512:{}", "0".repeat(64)),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn only_this_machine_is_plain_http() {
        for yes in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.0.0.2",
            "localhost",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "registry.example.com",
            "10.0.0.1:5000",
            "127.0.0.1.nip.io:5000",
            "ghcr.io",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
