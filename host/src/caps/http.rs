//! `http`: outbound requests through reqwest, limited to granted origins.

use super::{Capability, Grants, RunContext, ValidateContext, denied};
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::http;
use crate::grants::GrantError;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use url::Url;

/// What an origin pattern looks like, as every error about one says.
const ORIGIN_EXAMPLE: &str =
    "expected scheme://host:port, e.g. http://127.0.0.1:8080 or https://*.example.com:*";

/// Why an origin pattern (`--allow-http`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("\"{0}\" has no scheme; {example}", example = ORIGIN_EXAMPLE)]
    NoScheme(String),
    #[error("\"{0}\": scheme must be http or https; {example}", example = ORIGIN_EXAMPLE)]
    Scheme(String),
    #[error("\"{0}\" must be an origin without a path; {example}", example = ORIGIN_EXAMPLE)]
    Path(String),
    #[error("\"{text}\": port \"{port}\" is not a number or *; {example}", example = ORIGIN_EXAMPLE)]
    Port { text: String, port: String },
    #[error("\"{0}\" has an empty host; {example}", example = ORIGIN_EXAMPLE)]
    EmptyHost(String),
    #[error("\"{0}\": a host wildcard must be `*` or `*.domain`; {example}", example = ORIGIN_EXAMPLE)]
    Wildcard(String),
}

/// One allowed origin, `scheme://host:port`; host may be `*` or `*.domain`,
/// port may be `*`; a missing port means the scheme's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    host: String,
    port: Option<u16>,
    text: String,
}

impl OriginPattern {
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| OriginError::NoScheme(text.to_string()))?;
        if scheme != "http" && scheme != "https" {
            return Err(OriginError::Scheme(text.to_string()));
        }
        if rest.contains('/') || rest.contains('?') {
            return Err(OriginError::Path(text.to_string()));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, "*")) => (h, None),
            Some((h, p)) => (
                h,
                Some(p.parse::<u16>().map_err(|_| OriginError::Port {
                    text: text.to_string(),
                    port: p.to_string(),
                })?),
            ),
            None => (rest, Some(if scheme == "https" { 443 } else { 80 })),
        };
        if host.is_empty() {
            return Err(OriginError::EmptyHost(text.to_string()));
        }
        let wildcard_ok = match host.strip_prefix("*.") {
            Some(domain) => !domain.contains('*'),
            None => host == "*" || !host.contains('*'),
        };
        if !wildcard_ok {
            return Err(OriginError::Wildcard(text.to_string()));
        }
        Ok(Self {
            scheme: scheme.to_string(),
            host: host.to_ascii_lowercase(),
            port,
            text: text.to_string(),
        })
    }

    pub fn matches(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == self.host,
        };
        let port_ok = match self.port {
            None => true,
            Some(p) => url.port_or_known_default() == Some(p),
        };
        url.scheme() == self.scheme && host_ok && port_ok
    }
}

impl std::fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The origins a plugin may reach (`--allow-http`).
#[derive(Debug, Clone, Default)]
pub struct HttpGrant {
    origins: Vec<OriginPattern>,
    /// runner's own backends (Consul, a TCP Docker engine): out of reach
    /// whatever the grant says, since a plugin reaching them directly would
    /// bypass every kv, catalog and docker grant.
    protected: Vec<(String, u16)>,
}

/// Whether `host` is this machine's loopback (or the unspecified address,
/// which reaches it too): every spelling of it is one origin here.
fn is_local(host: &str) -> bool {
    use std::net::IpAddr;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let local = |ip: IpAddr| ip.is_loopback() || ip.is_unspecified();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| match ip {
            // `::ffff:127.0.0.1` reaches 127.0.0.1 too.
            IpAddr::V6(v6) => local(ip) || v6.to_ipv4_mapped().is_some_and(|v4| local(v4.into())),
            IpAddr::V4(_) => local(ip),
        })
}

impl HttpGrant {
    pub fn parse(patterns: &[String]) -> Result<Self, OriginError> {
        Ok(Self {
            origins: patterns
                .iter()
                .map(|p| OriginPattern::parse(p))
                .collect::<Result<_, _>>()?,
            protected: Vec::new(),
        })
    }

    /// Keep `endpoints` (URLs of runner's own backends) out of reach.
    pub fn protecting(mut self, endpoints: &[String]) -> Self {
        for endpoint in endpoints {
            let url = endpoint
                .replacen("tcp://", "http://", 1)
                .parse::<Url>()
                .ok();
            if let Some((host, port)) = url.as_ref().and_then(|u| {
                Some((
                    u.host_str()?.to_ascii_lowercase(),
                    u.port_or_known_default()?,
                ))
            }) {
                self.protected.push((host, port));
            }
        }
        self
    }

    /// Whether `url` is one of runner's own backends.
    pub fn is_protected(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.protected
            .iter()
            .any(|(h, p)| *p == port && (*h == host || (is_local(h) && is_local(&host))))
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    pub fn allows(&self, url: &Url) -> bool {
        !self.is_protected(url) && self.origins.iter().any(|o| o.matches(url))
    }
}

fn origin_of(url: &Url) -> String {
    format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

pub struct HttpCap {
    grant: Arc<HttpGrant>,
    // Built on first use: most stages never send a request.
    client: OnceLock<reqwest::Client>,
    max_timeout: Duration,
    max_body: u64,
}

impl HttpCap {
    fn client(&self) -> Result<&reqwest::Client, PluginError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let grant = self.grant.clone();
        // Redirects are followed only while they stay inside the allowlist.
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects (10)")
            } else if grant.allows(attempt.url()) {
                attempt.follow()
            } else {
                let target = origin_of(attempt.url());
                attempt.error(format!(
                    "redirect to {target} leaves the allowlist (or reaches runner's own backends)"
                ))
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .no_proxy()
            .build()
            .map_err(|e| PluginError::Failed(format!("http: cannot build client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }
}

fn classify(url: &Url, e: reqwest::Error, timeout: Duration) -> PluginError {
    if e.is_redirect() {
        let reason = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return denied(
            "http",
            format_args!("{url}: {reason}"),
            "--allow-http for the redirect target's origin",
        );
    }
    if e.is_timeout() {
        return PluginError::Timeout(format!(
            "http: {url} did not answer within {}",
            humantime::format_duration(timeout)
        ));
    }
    let msg = crate::error_chain::error_chain(&e);
    if e.is_connect() {
        PluginError::Unavailable(format!("http: cannot connect to {}: {msg}", origin_of(url)))
    } else {
        PluginError::Failed(format!("http: {url}: {msg}"))
    }
}

impl http::Host for HttpCap {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, PluginError> {
        let url = Url::parse(&request.url).map_err(|e| {
            PluginError::InvalidConfig(format!(
                "http: \"{}\" is not an absolute URL: {e}",
                request.url
            ))
        })?;
        if self.grant.is_protected(&url) {
            return Err(PluginError::Denied(format!(
                "http: {} is runner's own registry or engine; plugins reach it only through \
                 the kv, catalog and docker capabilities, and no --allow-http grant opens it",
                origin_of(&url)
            )));
        }
        if !self.grant.allows(&url) {
            let origin = origin_of(&url);
            return Err(denied(
                "http",
                format_args!("origin {origin} is not in the allowlist"),
                format_args!("--allow-http {origin}"),
            ));
        }
        let method = reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| {
                PluginError::InvalidConfig(format!(
                    "http: \"{}\" is not an HTTP method",
                    request.method
                ))
            })?;
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.max_timeout)
            .min(self.max_timeout);

        let mut builder = self.client()?.request(method, url.clone()).timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        let mut response = builder
            .send()
            .await
            .map_err(|e| classify(&url, e, timeout))?;

        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| classify(&url, e, timeout))?
        {
            if body.len() as u64 + chunk.len() as u64 > self.max_body {
                return Err(PluginError::Failed(format!(
                    "http: response body from {url} exceeds the {} cap; raise it with --http-max-body (in a pipeline, the stage's limits.http_max_body)",
                    bytesize::ByteSize(self.max_body)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(http::Response {
            status,
            headers,
            body,
        })
    }
}

list_grant_spec! {
    /// Allow HTTP to ORIGIN, `scheme://host:port`; host and port may be `*`.
    HttpSpec { http: "allow-http", "ORIGIN" }
}

impl Capability for HttpCap {
    const INTERFACES: &'static [&'static str] = &["runner:plugin/http"];
    const FLAG_HINT: &'static str = "--allow-http ORIGIN";
    const TOML_HINT: &'static str = "grants.http = [\"http://HOST:PORT\"]";
    const WIT: &'static [(&'static str, &'static str)] =
        &[("http.wit", include_str!("../../../wit/http.wit"))];
    type Spec = HttpSpec;
    type Grant = HttpGrant;

    fn validate(spec: &HttpSpec, _: &mut ValidateContext<'_>) -> Result<HttpGrant, GrantError> {
        HttpGrant::parse(&spec.http)
            .map_err(|r| GrantError::invalid("--allow-http", spec.http.join(","), r))
    }

    fn granted(grants: &Grants) -> bool {
        !grants.http.is_empty()
    }

    /// runner's own backends (the registry's and the engine's endpoints) are
    /// kept out of reach whatever the grant says.
    fn prepare(cx: &RunContext<'_>) -> Self {
        let mut endpoints: Vec<String> = cx.host.registry.endpoint().into_iter().collect();
        endpoints.push(cx.host.docker.host().to_string());
        Self {
            grant: Arc::new(cx.grants.http.clone().protecting(&endpoints)),
            client: OnceLock::new(),
            max_timeout: cx.limits.host_call_timeout,
            max_body: cx.limits.http_max_body,
        }
    }

    link_interfaces!(http);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn runners_own_backends_are_out_of_reach_whatever_the_grant() {
        let g = HttpGrant::parse(&["http://*:*".into()])
            .unwrap()
            .protecting(&[
                "http://127.0.0.1:8500/".into(),
                "tcp://127.0.0.1:2375".into(),
            ]);
        for reserved in [
            "http://127.0.0.1:8500/v1/kv/other/secret",
            "http://localhost:8500/v1/kv/x",
            "http://127.0.0.1:2375/containers/json",
            "http://[::ffff:127.0.0.1]:8500/v1/kv/x",
            "http://[::1]:8500/v1/kv/x",
            "http://localhost.:8500/v1/kv/x",
            "http://0.0.0.0:8500/v1/kv/x",
            "http://0x7f.1:8500/v1/kv/x",
        ] {
            assert!(g.is_protected(&url(reserved)), "{reserved}");
            assert!(!g.allows(&url(reserved)), "{reserved}");
        }
        assert!(g.allows(&url("http://127.0.0.1:8080/health")));
        // The unix-socket engine has no origin to protect.
        let g = HttpGrant::parse(&["http://127.0.0.1:*".into()])
            .unwrap()
            .protecting(&["unix:///var/run/docker.sock".into()]);
        assert!(g.allows(&url("http://127.0.0.1:2375/")));
    }

    #[test]
    fn origin_patterns_match_scheme_host_and_port() {
        let p = OriginPattern::parse("http://127.0.0.1:*").unwrap();
        assert!(p.matches(&url("http://127.0.0.1:8080/x")));
        assert!(!p.matches(&url("https://127.0.0.1:8080/x")));
        assert!(!p.matches(&url("http://127.0.0.2:8080/x")));

        let p = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(p.matches(&url("https://api.example.com/")));
        assert!(!p.matches(&url("https://api.example.com:8443/")));
        assert!(!p.matches(&url("https://example.com.evil.net/")));

        let p = OriginPattern::parse("http://localhost:8080").unwrap();
        assert!(p.matches(&url("http://LOCALHOST:8080/")));
        assert!(!p.matches(&url("http://localhost:8081/")));
    }

    #[test]
    fn bad_patterns_explain_the_expected_form() {
        for bad in [
            "127.0.0.1:80",
            "ftp://x:1",
            "http://x:80/path",
            "http://x:port",
            "http://a*b:1",
        ] {
            let err = OriginPattern::parse(bad).unwrap_err().to_string();
            assert!(err.contains("scheme://host:port"), "{bad}: {err}");
        }
    }
}
