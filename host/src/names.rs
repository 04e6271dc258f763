//! The one validation layer for names that cross a capability boundary.
//!
//! A plugin's names end up in URL paths (the Docker engine's API, Consul's
//! HTTP API), in SQL keys and in file names, where `..`, `%2e%2e`, `/` or `?`
//! mean something. Every capability parses what the plugin passes with the
//! functions here *before* its grant check, and sends exactly the string it
//! checked; the backends percent-encode each path segment on top (defence in
//! depth), so the name that was checked is the name that is sent.
//!
//! The rules are the backends' own, tightened where the backend is lax:
//! Docker's container-name rule, the distribution reference grammar for
//! images (through `oci-spec`), Consul's DNS-safe service names, and KV keys
//! made of non-empty `/`-separated segments without dot segments or
//! characters that URLs and Consul treat specially.

use crate::bindings::PluginError;

/// Longest container name accepted (Docker itself has no documented limit;
/// 128 is far past any real name and keeps messages readable).
pub const MAX_CONTAINER_NAME: usize = 128;
/// Longest KV key accepted (Consul's own limit on a key is far larger, but no
/// deployment key comes near it).
pub const MAX_KEY: usize = 512;
/// Longest service name (DNS labels are 63; Consul allows longer names).
pub const MAX_SERVICE_NAME: usize = 128;
/// Longest instance ID (runner's own IDs are `runner:<container>:<port>`).
pub const MAX_INSTANCE_ID: usize = 256;

/// What kind of name failed, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Container,
    Image,
    Key,
    Prefix,
    Service,
    InstanceId,
    Label,
    UpstreamFile,
    Backend,
    Host,
    SwarmService,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Container => "container name",
            NameKind::Image => "image reference",
            NameKind::Key => "key",
            NameKind::Prefix => "key prefix",
            NameKind::Service => "service name",
            NameKind::InstanceId => "instance ID",
            NameKind::Label => "label",
            NameKind::UpstreamFile => "upstream file",
            NameKind::Backend => "HAProxy backend",
            NameKind::Host => "host name",
            NameKind::SwarmService => "Swarm service name",
        })
    }
}

/// A name that does not follow its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?} is invalid: {reason}")]
pub struct InvalidName {
    pub kind: NameKind,
    pub name: String,
    pub reason: String,
}

impl InvalidName {
    fn new(kind: NameKind, name: &str, reason: impl Into<String>) -> Self {
        // Bound what a hostile name can put into a log line.
        let mut shown: String = name.chars().take(160).collect();
        if shown.len() < name.len() {
            shown.push('…');
        }
        Self {
            kind,
            name: shown,
            reason: reason.into(),
        }
    }

    /// The error a capability returns: `invalid-config`, prefixed with the capability.
    pub fn to_plugin_error(&self, capability: &str) -> PluginError {
        PluginError::InvalidConfig(format!("{capability}: {self}"))
    }
}

/// Characters that are never part of a name: URL syntax (`%`, `?`, `#`),
/// Windows separators, and controls (which also break log lines).
fn forbidden_char(c: char) -> Option<&'static str> {
    match c {
        '%' => Some("it contains '%' (percent-escapes are not decoded)"),
        '?' | '#' => Some("it contains '?' or '#' (URL syntax)"),
        '\\' => Some("it contains '\\'"),
        c if c.is_control() => Some("it contains a control character"),
        _ => None,
    }
}

/// Docker's rule for container names: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn container_name(name: &str) -> Result<&str, InvalidName> {
    let bad = |reason: &str| InvalidName::new(NameKind::Container, name, reason);
    if name.len() > MAX_CONTAINER_NAME {
        return Err(bad(&format!("longer than {MAX_CONTAINER_NAME} bytes")));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() < 2 {
        return Err(bad(
            "container names are [a-zA-Z0-9][a-zA-Z0-9_.-]+ (Docker's rule: no '/', no spaces)",
        ));
    }
    Ok(name)
}

/// The distribution reference grammar (`[domain[:port]/]path[:tag][@digest]`),
/// as Docker and every registry parse it.
pub fn image_reference(reference: &str) -> Result<&str, InvalidName> {
    let bad = |reason: String| InvalidName::new(NameKind::Image, reference, reason);
    if let Some(reason) = reference.chars().find_map(forbidden_char) {
        return Err(bad(reason.into()));
    }
    reference
        .parse::<oci_spec::distribution::Reference>()
        .map_err(|e| {
            bad(format!(
                "{e}; references are [registry[:port]/]name[:tag][@digest], names lowercase"
            ))
        })?;
    Ok(reference)
}

/// Segments of a key or prefix: no empty, `.` or `..` segment (a trailing `/`
/// is allowed: Consul's folder keys end with one).
fn key_like(kind: NameKind, key: &str, allow_empty: bool) -> Result<&str, InvalidName> {
    let bad = |reason: &str| InvalidName::new(kind, key, reason);
    if key.is_empty() {
        return if allow_empty {
            Ok(key)
        } else {
            Err(bad("it is empty"))
        };
    }
    if key.len() > MAX_KEY {
        return Err(bad(&format!("longer than {MAX_KEY} bytes")));
    }
    if let Some(reason) = key.chars().find_map(forbidden_char) {
        return Err(bad(reason));
    }
    let body = key.strip_suffix('/').unwrap_or(key);
    for segment in body.split('/') {
        match segment {
            "" => return Err(bad("it has an empty segment ('//' or a leading '/')")),
            "." | ".." => return Err(bad("it has a '.' or '..' segment")),
            _ => {}
        }
    }
    Ok(key)
}

/// A KV key: `/`-separated non-empty segments, no `.`/`..` segments, no `%`,
/// `\`, `?`, `#` or control characters.
pub fn kv_key(key: &str) -> Result<&str, InvalidName> {
    key_like(NameKind::Key, key, false)
}

/// A KV prefix to list: a key, or a partial one (`books-ms/col`); empty lists
/// everything (which only a `*` grant allows).
pub fn kv_prefix(prefix: &str) -> Result<&str, InvalidName> {
    key_like(NameKind::Prefix, prefix, true)
}

/// A service name: `[a-zA-Z0-9][a-zA-Z0-9._-]*` (DNS-safe, as Consul
/// recommends; no `/`, so it is one URL path segment).
pub fn service_name(name: &str) -> Result<&str, InvalidName> {
    ascii_id(NameKind::Service, name, MAX_SERVICE_NAME, &['.', '_', '-'])
}

/// An instance ID: `[a-zA-Z0-9][a-zA-Z0-9._:-]*` (runner's own IDs have `:`).
pub fn instance_id(id: &str) -> Result<&str, InvalidName> {
    ascii_id(
        NameKind::InstanceId,
        id,
        MAX_INSTANCE_ID,
        &['.', '_', '-', ':'],
    )
}

/// A file in a proxy's config directory: one plain component
/// (`[a-zA-Z0-9][a-zA-Z0-9._-]*`), never hidden (runner's own switch files
/// are), at most 128 bytes.
pub fn upstream_file(name: &str) -> Result<&str, InvalidName> {
    ascii_id(NameKind::UpstreamFile, name, 128, &['.', '_', '-'])
}

/// An HAProxy backend: `[a-zA-Z0-9][a-zA-Z0-9._:-]*`, at most 128 bytes;
/// no space, `;` or newline, which would start another runtime-API command.
pub fn proxy_backend(name: &str) -> Result<&str, InvalidName> {
    ascii_id(NameKind::Backend, name, 128, &['.', '_', '-', ':'])
}

/// A fleet host's name (`[hosts.NAME]`): `[a-zA-Z0-9][a-zA-Z0-9._-]*`,
/// at most 63 bytes (a DNS label's length: host names end up in messages,
/// status columns and grants, not in URLs).
pub fn host_name(name: &str) -> Result<&str, InvalidName> {
    ascii_id(NameKind::Host, name, 63, &['.', '_', '-'])
}

/// A Swarm service's name, as Swarm takes it: `[a-zA-Z0-9][a-zA-Z0-9_-]*`,
/// ending alphanumeric, at most 63 bytes (it becomes a DNS name on the
/// Swarm's networks; no `.`, which would read as a task's container name
/// `SERVICE.SLOT.TASK`).
pub fn swarm_service_name(name: &str) -> Result<&str, InvalidName> {
    ascii_id(NameKind::SwarmService, name, 63, &['_', '-'])?;
    if !name.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(InvalidName::new(
            NameKind::SwarmService,
            name,
            "Swarm service names end with a letter or digit",
        ));
    }
    Ok(name)
}

fn ascii_id<'a>(
    kind: NameKind,
    name: &'a str,
    max: usize,
    punctuation: &[char],
) -> Result<&'a str, InvalidName> {
    let rule = || {
        let extra: String = punctuation.iter().collect();
        format!("{kind}s are [a-zA-Z0-9][a-zA-Z0-9{extra}]*, at most {max} bytes")
    };
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || punctuation.contains(&c));
    if !first_ok || !rest_ok || name.len() > max {
        return Err(InvalidName::new(kind, name, rule()));
    }
    Ok(name)
}

/// Percent-encode one URL path segment: everything but RFC 3986's unreserved
/// characters. Validation already refused `.`/`..` segments, which encoding
/// cannot neutralise (URL parsers treat `%2e%2e` as `..`).
pub fn path_segment(segment: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// Percent-encode each `/`-separated segment of a key, keeping the `/`s.
pub fn path_segments(key: &str) -> String {
    key.split('/')
        .map(path_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_service_names_follow_swarms_rule() {
        for ok in ["books-ms-blue", "a", "x_y-1", "B2"] {
            assert!(swarm_service_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "books-ms.1",
            "books-ms-",
            "-x",
            "x/y",
            "x y",
            "x\0",
            "ä",
            &"a".repeat(64),
        ] {
            let e = swarm_service_name(bad).unwrap_err();
            assert_eq!(e.kind, NameKind::SwarmService, "{bad}");
        }
    }

    #[test]
    fn container_names_follow_dockers_rule() {
        for ok in ["books-ms-blue", "a1", "x_y.z-1", "B2"] {
            assert!(container_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "x-a/../victim",
            "x-a/%2e%2e/victim",
            "-x",
            ".x",
            "x y",
            "x\0",
            "x?a",
            "x#a",
            "ä-a",
            &"a".repeat(129),
        ] {
            let e = container_name(bad).unwrap_err();
            assert_eq!(e.kind, NameKind::Container, "{bad}");
        }
        let e = container_name("x-a/../victim").unwrap_err();
        assert!(
            e.to_string().contains("container name \"x-a/../victim\""),
            "{e}"
        );
    }

    #[test]
    fn image_references_follow_the_distribution_grammar() {
        for ok in [
            "books-ms:v2",
            "127.0.0.1:5000/books-ms:v1",
            "localhost:5000/team/app",
            "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(image_reference(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "img:x/../other:v1",
            "img:v1/../../x",
            "../x",
            "a/../b:v1",
            "UPPER:v1",
            "a%2e%2e/b",
            "a:b:c",
            "a b",
        ] {
            assert!(image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_have_no_dot_or_empty_segments_or_url_syntax() {
        for ok in ["books-ms/color", "books-ms/", "a/b/c", "a.b/c..d", "x"] {
            assert!(kv_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "books-ms/../other/secret",
            "./a",
            "a/.",
            "a//b",
            "/a",
            "a/%2e%2e/b",
            "a\\b",
            "a?b",
            "a#b",
            "a\nb",
        ] {
            assert!(kv_key(bad).is_err(), "{bad}");
        }
        assert!(kv_prefix("").is_ok());
        assert!(kv_prefix("books-ms/col").is_ok());
        assert!(kv_prefix("books-ms/..").is_err());
    }

    #[test]
    fn services_and_instance_ids_are_single_segments() {
        assert!(service_name("books-ms").is_ok());
        assert!(service_name("books-ms-x/../payments").is_err());
        assert!(service_name("").is_err());
        assert!(service_name("_runner").is_err());
        assert!(instance_id("runner:books-ms-blue:8080").is_ok());
        assert!(instance_id("a/../b").is_err());
        assert!(instance_id(&"a".repeat(257)).is_err());
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(path_segment("a b?#%/"), "a%20b%3F%23%25%2F");
        assert_eq!(path_segments("books-ms/color"), "books-ms/color");
        assert_eq!(path_segments("a:b/c d"), "a%3Ab/c%20d");
    }

    #[test]
    fn hostile_names_are_shortened_in_messages() {
        let e = kv_key(&format!("{}\n", "a".repeat(10_000))).unwrap_err();
        assert!(e.to_string().len() < 400);
    }
}
