//! A runner file's `[hosts.NAME]`: the Docker hosts a deploy places its
//! containers on, as written, validated, and made into one
//! [`FleetEngine`](super::FleetEngine).
//!
//! ```toml
//! [hosts.prod-1]
//! docker = "tcp://10.0.0.5:2376"   # or unix:///var/run/docker.sock
//! tls_verify = true                # as DOCKER_TLS_VERIFY=1 ...
//! cert_path = "certs/prod-1"       # ... with DOCKER_CERT_PATH: ca.pem, cert.pem, key.pem
//! address = "10.0.0.5"             # where the proxy reaches its published ports
//! ```

use super::{BollardEngine, DockerEngine, FleetEngine, FleetHost};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Every call to a host that is not an image transfer or a wait ends within
/// this unless its `timeout` says otherwise: below the default host-call
/// timeout (30 s), so a host that stops answering is named in the error.
pub const DEFAULT_HOST_TIMEOUT: Duration = Duration::from_secs(20);

/// Most hosts one runner file names: past this, one deploy's fan-out to
/// every host (connections, calls) wants an orchestrator (Swarm).
pub const MAX_HOSTS: usize = 256;

/// One `[hosts.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// The engine: `unix:///path/docker.sock`, `tcp://HOST:PORT`.
    pub docker: String,
    /// Where the proxy and the stages reach this host's published ports
    /// (default: the `tcp://` address's host; 127.0.0.1 for a unix socket).
    pub address: Option<String>,
    /// The IP the containers' ports are published on at the host (default:
    /// `address` when it is an IP, else 0.0.0.0).
    pub publish: Option<String>,
    /// Speak TLS and verify the engine (Docker's `DOCKER_TLS_VERIFY`).
    #[serde(default)]
    pub tls_verify: bool,
    /// `ca.pem`, `cert.pem` and `key.pem` (Docker's `DOCKER_CERT_PATH`),
    /// relative to the runner file.
    pub cert_path: Option<PathBuf>,
    /// Every call to the host but image transfers and waits (default 20s).
    pub timeout: Option<String>,
}

/// A host, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerHost {
    pub name: String,
    pub docker: String,
    pub address: String,
    pub publish_ip: String,
    pub tls: Option<PathBuf>,
    pub timeout: Duration,
}

/// Why a `[hosts.NAME]` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[hosts.{name}]: {reason}")]
pub struct HostSpecError {
    pub name: String,
    pub reason: String,
}

impl HostSpec {
    /// Validate `[hosts.NAME]`; `base` is the runner file's directory.
    pub fn validate(&self, name: &str, base: &Path) -> Result<DockerHost, HostSpecError> {
        let bad = |reason: String| HostSpecError {
            name: name.to_string(),
            reason,
        };
        crate::names::host_name(name).map_err(|e| bad(e.to_string()))?;
        let docker = self.docker.trim();
        let tcp_host = if let Some(rest) = docker.strip_prefix("tcp://") {
            let authority = rest.trim_end_matches('/');
            let (host, port) = authority.rsplit_once(':').ok_or_else(|| {
                bad(format!(
                    "docker = \"{docker}\" names no port (tcp://HOST:PORT, e.g. tcp://10.0.0.5:2376)"
                ))
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() || authority.contains('/') {
                return Err(bad(format!("docker = \"{docker}\" is not tcp://HOST:PORT")));
            }
            Some(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
            )
        } else if let Some(path) = docker.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad(format!(
                    "docker = \"{docker}\": a unix socket is named by its absolute path (unix:///var/run/docker.sock)"
                )));
            }
            None
        } else {
            return Err(bad(format!(
                "docker = \"{docker}\": runner speaks to an engine at unix:///PATH or tcp://HOST:PORT"
            )));
        };
        let tls = match (self.tls_verify, &self.cert_path) {
            (true, Some(dir)) => {
                let dir = base.join(dir);
                for file in ["ca.pem", "cert.pem", "key.pem"] {
                    if !dir.join(file).is_file() {
                        return Err(bad(format!(
                            "cert_path {}: no {file} there (Docker's DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem)",
                            dir.display()
                        )));
                    }
                }
                Some(dir)
            }
            (true, None) => {
                return Err(bad(
                    "tls_verify = true needs cert_path = DIR (ca.pem, cert.pem, key.pem)".into(),
                ));
            }
            (false, Some(_)) => {
                return Err(bad(
                    "cert_path is set but tls_verify is not: runner speaks TLS only when it verifies the engine; add tls_verify = true"
                        .into(),
                ));
            }
            (false, None) => None,
        };
        if tls.is_some() && tcp_host.is_none() {
            return Err(bad("TLS is for tcp:// engines, not unix sockets".into()));
        }
        let address = match (&self.address, &tcp_host) {
            (Some(a), _) => a.trim().to_string(),
            (None, Some(host)) => host.clone(),
            (None, None) => "127.0.0.1".to_string(),
        };
        let address_ok = address.parse::<IpAddr>().is_ok()
            || (!address.is_empty()
                && address.len() <= 253
                && address
                    .split('.')
                    .all(|l| crate::names::host_name(l).is_ok() && !l.contains('_')));
        if !address_ok {
            return Err(bad(format!(
                "address \"{address}\" is not an IP address or a DNS name"
            )));
        }
        let publish_ip = match &self.publish {
            Some(ip) => ip
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| bad(format!("publish \"{ip}\" is not an IP address")))?
                .to_string(),
            None => address
                .parse::<IpAddr>()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|_| "0.0.0.0".into()),
        };
        let timeout = match &self.timeout {
            Some(text) => humantime::parse_duration(text)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(format!("timeout \"{text}\" is not a duration such as 20s")))?,
            None => DEFAULT_HOST_TIMEOUT,
        };
        Ok(DockerHost {
            name: name.to_string(),
            docker: docker.to_string(),
            address,
            publish_ip,
            tls,
            timeout,
        })
    }
}

/// The runner file's hosts, validated, in name order.
pub fn validate_hosts<'a>(
    hosts: impl IntoIterator<Item = (&'a String, &'a HostSpec)>,
    base: &Path,
) -> Result<Vec<DockerHost>, HostSpecError> {
    let hosts: Vec<DockerHost> = hosts
        .into_iter()
        .map(|(name, spec)| spec.validate(name, base))
        .collect::<Result<_, _>>()?;
    if hosts.len() > MAX_HOSTS {
        return Err(HostSpecError {
            name: hosts[MAX_HOSTS].name.clone(),
            reason: format!(
                "{} hosts; a runner file names at most {MAX_HOSTS} (beyond that, use an orchestrator such as Docker Swarm)",
                hosts.len()
            ),
        });
    }
    Ok(hosts)
}

/// The engine of `hosts`: a fleet of one engine per host.
pub fn fleet(hosts: &[DockerHost]) -> DockerEngine {
    let members = hosts
        .iter()
        .map(|h| {
            let engine = BollardEngine::new(Some(h.docker.clone()));
            let engine = match &h.tls {
                Some(dir) => engine.with_tls(dir.clone()),
                None => engine,
            };
            FleetHost {
                name: h.name.clone(),
                address: h.address.clone(),
                publish_ip: h.publish_ip.clone(),
                timeout: h.timeout,
                engine: Arc::new(engine),
            }
        })
        .collect();
    DockerEngine::from_engine(Arc::new(FleetEngine::new(members)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(docker: &str) -> HostSpec {
        HostSpec {
            docker: docker.into(),
            ..HostSpec::default()
        }
    }

    #[test]
    fn addresses_default_from_the_engine_and_publish_follows_them() {
        let base = Path::new(".");
        let tcp = spec("tcp://10.0.0.5:2375")
            .validate("prod-1", base)
            .unwrap();
        assert_eq!(
            (tcp.address.as_str(), tcp.publish_ip.as_str()),
            ("10.0.0.5", "10.0.0.5")
        );
        assert_eq!(tcp.timeout, DEFAULT_HOST_TIMEOUT);
        let unix = spec("unix:///var/run/docker.sock")
            .validate("local", base)
            .unwrap();
        assert_eq!(
            (unix.address.as_str(), unix.publish_ip.as_str()),
            ("127.0.0.1", "127.0.0.1")
        );
        let named = HostSpec {
            address: Some("prod-1.internal".into()),
            ..spec("tcp://prod-1.internal:2375")
        }
        .validate("prod-1", base)
        .unwrap();
        assert_eq!(
            named.publish_ip, "0.0.0.0",
            "a DNS name is not an IP to bind"
        );
    }

    #[test]
    fn bad_hosts_are_refused_with_the_fix() {
        let base = Path::new(".");
        let refused = |s: HostSpec, name: &str| s.validate(name, base).unwrap_err().to_string();
        for (s, want) in [
            (spec("tcp://10.0.0.5"), "names no port"),
            (spec("ssh://prod"), "unix:///PATH or tcp://HOST:PORT"),
            (spec("unix://relative.sock"), "absolute path"),
            (spec("tcp://10.0.0.5:99999"), "is not tcp://HOST:PORT"),
            (
                HostSpec {
                    tls_verify: true,
                    ..spec("tcp://10.0.0.5:2376")
                },
                "needs cert_path",
            ),
            (
                HostSpec {
                    cert_path: Some("certs".into()),
                    ..spec("tcp://10.0.0.5:2376")
                },
                "add tls_verify = true",
            ),
            (
                HostSpec {
                    tls_verify: true,
                    cert_path: Some("/nonexistent-certs".into()),
                    ..spec("tcp://10.0.0.5:2376")
                },
                "no ca.pem there",
            ),
            (
                HostSpec {
                    address: Some("10.0.0.5; rm".into()),
                    ..spec("tcp://10.0.0.5:2376")
                },
                "not an IP address or a DNS name",
            ),
            (
                HostSpec {
                    publish: Some("prod".into()),
                    ..spec("tcp://10.0.0.5:2376")
                },
                "publish \"prod\" is not an IP",
            ),
            (
                HostSpec {
                    timeout: Some("soon".into()),
                    ..spec("tcp://10.0.0.5:2376")
                },
                "timeout \"soon\"",
            ),
        ] {
            let message = refused(s, "prod-1");
            assert!(message.starts_with("[hosts.prod-1]: "), "{message}");
            assert!(message.contains(want), "{message} lacks {want}");
        }
        assert!(refused(spec("tcp://10.0.0.5:2375"), "prod/1").contains("host name"));
        let many: Vec<(String, HostSpec)> = (0..=MAX_HOSTS)
            .map(|i| (format!("h{i:03}"), spec("tcp://10.0.0.5:2375")))
            .collect();
        let err = validate_hosts(many.iter().map(|(n, s)| (n, s)), base).unwrap_err();
        assert!(err.reason.contains("at most 256"), "{err}");
    }
}
