//! The grant model: everything a plugin may touch, default deny.
//!
//! Grants are written as CLI flags (`--allow-kv`, ...) or as a `[grants]`
//! table in TOML (the same shape a pipeline file uses per stage), merged, then
//! validated once when the plugin is loaded. Each capability owns the parsing
//! of its own grant type; this module only gathers them.

use crate::caps::catalog::ServiceGrant;
use crate::caps::docker::{ContainerLimits, DockerGrant};
use crate::caps::http::HttpGrant;
use crate::caps::kv::KvGrant;
use crate::caps::proxy::ProxyConfig;
use crate::caps::template::GrantedDir;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Grants as written by the operator, before validation.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    /// KV key prefixes (`books-ms/`), or `*` for every key.
    #[serde(default)]
    pub kv: Vec<String>,
    /// Catalog service names, glob patterns allowed (`books-ms-*`).
    #[serde(default)]
    pub services: Vec<String>,
    /// HTTP origins, `scheme://host:port` (`http://127.0.0.1:*`).
    #[serde(default)]
    pub http: Vec<String>,
    /// Directories preopened for WASI file access: `HOST[:GUEST][:ro|rw]`.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Directories templates may render into.
    #[serde(default)]
    pub template_out: Vec<String>,
    /// Container names, glob patterns allowed (`books-ms-*`).
    #[serde(default)]
    pub containers: Vec<String>,
    /// Image references, glob patterns allowed (`books-ms:*`).
    #[serde(default)]
    pub images: Vec<String>,
    /// Building images from granted directories.
    #[serde(default)]
    pub build: bool,
    /// Pushing granted images.
    #[serde(default)]
    pub push: bool,
    /// Resource limits of containers the plugin runs, raising the defaults:
    /// `memory=4GiB,pids=4096,cpus=2`.
    #[serde(default)]
    pub container_limits: Option<String>,
    /// Proxies (defined in `[proxies.NAME]`) the plugin may reload.
    #[serde(default)]
    pub proxies: Vec<String>,
    /// Hooks (defined in `[hooks.NAME]`) the plugin may run.
    #[serde(default)]
    pub hooks: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("invalid {flag} grant \"{value}\": {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read runner file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runner file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error(
        "--allow-{kind} {name}: no [{table}.{name}] is defined; define it in the runner file (-f FILE)"
    )]
    Undefined {
        kind: &'static str,
        table: &'static str,
        name: String,
    },
}

/// A directory preopened into the guest's WASI filesystem.
#[derive(Debug, Clone)]
pub struct DirGrant {
    pub granted: GrantedDir,
    /// The path the guest sees.
    pub guest: String,
    pub writable: bool,
}

impl DirGrant {
    /// Where the guest path `guest` lies on the host, if inside this grant.
    pub fn host_path(&self, guest: &str) -> Option<PathBuf> {
        Path::new(guest)
            .strip_prefix(&self.guest)
            .ok()
            .map(|rest| self.granted.path().join(rest))
    }
}

/// Where the guest path `guest` lies on the host, through any of `dirs`.
pub fn host_path(dirs: &[DirGrant], guest: &str) -> Option<PathBuf> {
    dirs.iter().find_map(|d| d.host_path(guest))
}

/// Validated grants, ready to build one run's capabilities.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub kv: KvGrant,
    pub services: ServiceGrant,
    pub http: HttpGrant,
    pub dirs: Vec<DirGrant>,
    pub template_out: Vec<GrantedDir>,
    /// Output directories a proxy grant opened (its config dir) without an
    /// explicit `template_out` grant: only templates from read-only
    /// `--allow-dir`s (the operator's) may render there, never text the
    /// plugin wrote, which could add any directive to the proxy's config.
    pub operator_templates_only: Vec<GrantedDir>,
    pub docker: DockerGrant,
    pub proxies: Vec<ProxyConfig>,
    pub hooks: Vec<String>,
    /// Granted directories that do not exist yet (a later step creates
    /// them): a warning when validating, an error when a run needs them.
    pub missing_dirs: Vec<PathBuf>,
}

impl GrantsSpec {
    /// Read just the `[grants]` table of TOML text (tests, simple files).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Only {
            #[serde(default)]
            grants: GrantsSpec,
        }
        toml::from_str::<Only>(text)
            .map(|f| f.grants)
            .map_err(|e| e.to_string())
    }

    /// Make relative directory grants relative to `base` (a runner file's directory).
    pub fn rebase(&mut self, base: &Path) {
        for d in &mut self.dirs {
            if let Some(host) = d.split(':').next().filter(|h| Path::new(h).is_relative()) {
                *d = format!("{}{}", base.join(host).display(), &d[host.len()..]);
            }
        }
        for d in &mut self.template_out {
            if Path::new(d.as_str()).is_relative() {
                *d = base.join(d.as_str()).display().to_string();
            }
        }
    }

    /// Add `other`'s grants to these (flags add to a file's grants).
    pub fn merge(&mut self, other: GrantsSpec) {
        self.kv.extend(other.kv);
        self.services.extend(other.services);
        self.http.extend(other.http);
        self.dirs.extend(other.dirs);
        self.template_out.extend(other.template_out);
        self.containers.extend(other.containers);
        self.images.extend(other.images);
        self.build |= other.build;
        self.push |= other.push;
        if other.container_limits.is_some() {
            self.container_limits = other.container_limits;
        }
        self.proxies.extend(other.proxies);
        self.hooks.extend(other.hooks);
    }

    /// Validate every grant; directories must exist, and granted proxies and
    /// hooks must be defined (`proxies` holds the runner file's definitions).
    pub fn validate_with(
        &self,
        proxies: &[ProxyConfig],
        hooks: &[String],
    ) -> Result<Grants, GrantError> {
        let invalid = |flag: &'static str, value: &str, reason: String| GrantError::Invalid {
            flag,
            value: value.to_string(),
            reason,
        };
        let kv =
            KvGrant::parse(&self.kv).map_err(|r| invalid("--allow-kv", &self.kv.join(","), r))?;
        let services = ServiceGrant::parse(&self.services)
            .map_err(|r| invalid("--allow-service", &self.services.join(","), r))?;
        let http = HttpGrant::parse(&self.http)
            .map_err(|r| invalid("--allow-http", &self.http.join(","), r.to_string()))?;
        let mut missing_dirs = Vec::new();
        let dirs = self
            .dirs
            .iter()
            .map(|d| parse_dir(d, &mut missing_dirs).map_err(|r| invalid("--allow-dir", d, r)))
            .collect::<Result<_, _>>()?;
        let mut template_out: Vec<GrantedDir> = self
            .template_out
            .iter()
            .map(|d| {
                existing_dir(Path::new(d), &mut missing_dirs)
                    .map_err(|r| invalid("--allow-template-out", d, r))
            })
            .collect::<Result<_, _>>()?;
        let limits = self
            .container_limits
            .as_deref()
            .map(ContainerLimits::parse)
            .transpose()
            .map_err(|r| {
                invalid(
                    "--container-limits",
                    self.container_limits.as_deref().unwrap_or_default(),
                    r,
                )
            })?
            .unwrap_or_default();
        let docker = DockerGrant::parse(&self.containers, &self.images, self.build, self.push)
            .map(|g| g.with_limits(limits))
            .map_err(|r| {
                invalid(
                    "--allow-container/--allow-image",
                    &[self.containers.clone(), self.images.clone()]
                        .concat()
                        .join(","),
                    r,
                )
            })?;
        let mut granted_proxies = Vec::new();
        let mut operator_templates_only = Vec::new();
        for name in &self.proxies {
            let proxy =
                proxies
                    .iter()
                    .find(|p| &p.name == name)
                    .ok_or_else(|| GrantError::Undefined {
                        kind: "proxy",
                        table: "proxies",
                        name: name.clone(),
                    })?;
            // Rendering the proxy's config is what the proxy grant is for, from
            // the operator's templates only, unless the operator also granted
            // the directory as a template output (raw config from the plugin).
            if let Some(dir) = &proxy.config_dir
                && !template_out.iter().any(|d| d.same_dir(dir))
            {
                template_out.push(dir.clone());
                operator_templates_only.push(dir.clone());
            }
            granted_proxies.push(proxy.clone());
        }
        if let Some(name) = self.hooks.iter().find(|h| !hooks.contains(h)) {
            return Err(GrantError::Undefined {
                kind: "hook",
                table: "hooks",
                name: name.clone(),
            });
        }
        Ok(Grants {
            kv,
            services,
            http,
            dirs,
            template_out,
            operator_templates_only,
            docker,
            proxies: granted_proxies,
            hooks: self.hooks.clone(),
            missing_dirs,
        })
    }

    /// Validate grants that name no proxies or hooks.
    pub fn validate(&self) -> Result<Grants, GrantError> {
        self.validate_with(&[], &[])
    }
}

/// A granted directory; one that does not exist yet is allowed (a later
/// step may create it) and reported in `missing`.
fn existing_dir(path: &Path, missing: &mut Vec<PathBuf>) -> Result<GrantedDir, String> {
    if path.is_dir() {
        return GrantedDir::new(path).map_err(|e| e.to_string());
    }
    if path.exists() {
        return Err(format!("{} is not a directory", path.display()));
    }
    missing.push(path.to_path_buf());
    GrantedDir::not_yet_created(path).map_err(|e| e.to_string())
}

/// `HOST[:GUEST][:ro|rw]`; the guest path defaults to the host path, the mode to ro.
fn parse_dir(spec: &str, missing: &mut Vec<PathBuf>) -> Result<DirGrant, String> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let writable = match parts.last() {
        Some(&"rw") => {
            parts.pop();
            true
        }
        Some(&"ro") => {
            parts.pop();
            false
        }
        _ => false,
    };
    let (host, guest) = match parts.as_slice() {
        [host] => (*host, None),
        [host, guest] => (*host, Some(*guest)),
        _ => return Err("expected HOST[:GUEST][:ro|rw], e.g. ./reports:/reports:rw".into()),
    };
    let granted = existing_dir(Path::new(host), missing)?;
    let guest = guest
        .map(str::to_string)
        .unwrap_or_else(|| granted.path().display().to_string());
    if !guest.starts_with('/') {
        return Err(format!(
            "guest path \"{guest}\" must be absolute, e.g. /reports"
        ));
    }
    Ok(DirGrant {
        granted,
        guest,
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_grants_section_parses_and_merges_with_flags() {
        let mut spec = GrantsSpec::from_toml(
            r#"
            [grants]
            kv = ["books-ms/"]
            services = ["books-ms-*"]
            http = ["http://127.0.0.1:*"]
            "#,
        )
        .unwrap();
        spec.merge(GrantsSpec {
            kv: vec!["other/".into()],
            ..Default::default()
        });
        assert_eq!(spec.kv, ["books-ms/", "other/"]);
        let g = spec.validate().unwrap();
        assert!(g.kv.allows_key("other/x"));
        assert!(g.services.allows("books-ms-blue"));
    }

    #[test]
    fn unknown_toml_keys_are_errors() {
        let err = GrantsSpec::from_toml("[grants]\nkvv = []").unwrap_err();
        assert!(err.contains("kvv"), "{err}");
    }

    #[test]
    fn dir_specs_parse_modes_and_guest_paths() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().display().to_string();
        let mut missing = Vec::new();
        let g = parse_dir(&format!("{host}:/reports:rw"), &mut missing).unwrap();
        assert_eq!((g.guest.as_str(), g.writable), ("/reports", true));
        let g = parse_dir(&host, &mut missing).unwrap();
        assert_eq!(
            (g.guest, g.writable),
            (d.path().display().to_string(), false)
        );
        assert!(
            parse_dir(&format!("{host}:rel"), &mut missing)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(missing.is_empty());
        // A directory a later step creates: allowed, and reported.
        let g = parse_dir("/does/not/exist:/out:rw", &mut missing).unwrap();
        assert_eq!(g.guest, "/out");
        assert_eq!(missing, [PathBuf::from("/does/not/exist")]);
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(
            parse_dir(&file.display().to_string(), &mut missing)
                .unwrap_err()
                .contains("not a directory")
        );
    }

    #[test]
    fn invalid_grants_name_the_flag() {
        let spec = GrantsSpec {
            http: vec!["localhost".into()],
            ..Default::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(
            err.contains("--allow-http") && err.contains("scheme://host:port"),
            "{err}"
        );
    }
}
