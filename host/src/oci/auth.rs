//! Registry credentials, found as Docker users keep them:
//!
//! 1. `RUNNER_REGISTRY_USERNAME` + `RUNNER_REGISTRY_PASSWORD` (CI secrets),
//!    for the one registry `RUNNER_REGISTRY_HOST` names: never for any
//!    other, so a pipeline that names an unknown registry (a pull request
//!    changing a plugin reference) cannot collect the CI's secret;
//! 2. `auths` in `$DOCKER_CONFIG/config.json` (else `~/.docker/config.json`):
//!    `auth` (base64 `user:password`) or `username` + `password`, as
//!    `docker login` and `runner plugin login` write them.
//!
//! The registry's token flow (a 401 with `WWW-Authenticate: Bearer`) is
//! oci-client's; these are the credentials it starts from.

use super::OciError;
use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use std::path::PathBuf;

/// The Docker config file credentials are read from and written to.
pub fn docker_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(|dir| PathBuf::from(dir).join("config.json"))
        .or_else(|| dirs::home_dir().map(|home| home.join(".docker").join("config.json")))
}

/// Where the credentials for `registry` came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    None,
    Environment,
    DockerConfig(PathBuf),
}

/// The credentials to use with `registry` (`host[:port]`).
pub fn credentials(registry: &str) -> Result<(RegistryAuth, Source), OciError> {
    let user = std::env::var("RUNNER_REGISTRY_USERNAME").ok();
    let password = std::env::var("RUNNER_REGISTRY_PASSWORD").ok();
    if let (Some(user), Some(password)) = (user, password) {
        match std::env::var("RUNNER_REGISTRY_HOST") {
            Ok(host) if host == registry => {
                return Ok((RegistryAuth::Basic(user, password), Source::Environment));
            }
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "RUNNER_REGISTRY_USERNAME/PASSWORD are set but RUNNER_REGISTRY_HOST is not: \
                 they are used only for the registry it names; not sending them to {registry}"
            ),
        }
    }
    let Some(path) = docker_config_path() else {
        return Ok((RegistryAuth::Anonymous, Source::None));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((RegistryAuth::Anonymous, Source::None));
        }
        Err(e) => {
            return Err(OciError::Credentials {
                path,
                detail: e.to_string(),
            });
        }
    };
    let bad = |detail: String| OciError::Credentials {
        path: path.clone(),
        detail,
    };
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let auths = config.get("auths").and_then(|a| a.as_object());
    let entry = auths.and_then(|auths| {
        [
            registry.to_string(),
            format!("https://{registry}"),
            format!("http://{registry}"),
            format!("https://{registry}/v2/"),
        ]
        .iter()
        .find_map(|key| auths.get(key))
    });
    let Some(entry) = entry else {
        return Ok((RegistryAuth::Anonymous, Source::None));
    };
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    if let Some(encoded) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| bad(format!("auths.{registry}.auth is not base64")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("auths.{registry}.auth is not UTF-8")))?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            bad(format!(
                "auths.{registry}.auth is not base64 of user:password"
            ))
        })?;
        return Ok((
            RegistryAuth::Basic(user.into(), password.into()),
            Source::DockerConfig(path.clone()),
        ));
    }
    if let (Some(user), Some(password)) = (field("username"), field("password")) {
        return Ok((
            RegistryAuth::Basic(user.into(), password.into()),
            Source::DockerConfig(path.clone()),
        ));
    }
    Ok((RegistryAuth::Anonymous, Source::None))
}

/// Record `user:password` for `registry` in the Docker config (as `docker
/// login` does: other registries and settings are kept), mode 0600.
pub fn store(registry: &str, user: &str, password: &str) -> Result<PathBuf, OciError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = docker_config_path().ok_or_else(|| OciError::Credentials {
        path: PathBuf::from("~/.docker/config.json"),
        detail: "no home directory; set DOCKER_CONFIG".into(),
    })?;
    let bad = |detail: String| OciError::Credentials {
        path: path.clone(),
        detail,
    };
    let mut config: serde_json::Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(bad(e.to_string())),
    };
    let root = config
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("`auths` is not an object".into()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    auths.insert(registry.to_string(), serde_json::json!({ "auth": encoded }));
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir).map_err(|e| bad(e.to_string()))?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| bad(e.to_string()))?;
    let temp = dir.join(format!(".config.json.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)
    };
    write().map_err(|e| bad(e.to_string()))?;
    Ok(path)
}
