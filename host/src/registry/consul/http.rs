//! Consul's HTTP client: bounded retries with backoff on connection errors
//! and 5xx answers, the ACL token on every request, a 403 as `Denied`.

use super::ConsulRegistry;
use crate::registry::RegistryError;
use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use std::time::Duration;
use url::Url;

/// A non-5xx answer.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    /// `X-Consul-Index`, on reads.
    pub(super) index: Option<u64>,
    pub(super) body: bytes::Bytes,
}

/// A request failure worth retrying: the server was unreachable or answered 5xx.
enum Attempt {
    Retry(RegistryError),
    Final(RegistryError),
}

impl ConsulRegistry {
    pub(super) fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                if v.is_empty() {
                    pairs.append_key_only(k);
                } else {
                    pairs.append_pair(k, v);
                }
            }
        }
        url
    }

    /// Send with bounded retries; `what` names the key or service for errors.
    /// Returns (status, body) for any non-5xx answer.
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(StatusCode, bytes::Bytes), RegistryError> {
        let answer = self.send_with(method, url, body, what, None).await?;
        Ok((answer.status, answer.body))
    }

    /// `send`, with the answer's `X-Consul-Index` and an optional timeout
    /// replacing the client's (a blocking query outlives a normal request).
    pub(super) async fn send_with(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<Answer, RegistryError> {
        let attempt = || async {
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            if let Some(token) = &self.token {
                request = request.header("X-Consul-Token", token);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(|e| {
                Attempt::Retry(RegistryError::Unavailable(format!(
                    "consul at {}: {e}",
                    self.base
                )))
            })?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let bytes = response.bytes().await.map_err(|e| {
                Attempt::Retry(RegistryError::Unavailable(format!(
                    "consul at {}: {e}",
                    self.base
                )))
            })?;
            if status.is_server_error() {
                return Err(Attempt::Retry(RegistryError::Unavailable(format!(
                    "consul at {} answered {status} for {what}: {}",
                    self.base,
                    String::from_utf8_lossy(&bytes).trim()
                ))));
            }
            if status == StatusCode::FORBIDDEN {
                return Err(Attempt::Final(RegistryError::Denied(format!(
                    "consul ACL denied access to {what}; check the token (--consul-token or CONSUL_HTTP_TOKEN)"
                ))));
            }
            Ok(Answer {
                status,
                index,
                body: bytes,
            })
        };
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(1))
                    .with_max_times(3),
            )
            .when(|e| matches!(e, Attempt::Retry(_)))
            .await
            .map_err(|e| match e {
                Attempt::Retry(e) | Attempt::Final(e) => e,
            })
    }

    pub(super) fn unexpected(what: &str, status: StatusCode, body: &[u8]) -> RegistryError {
        RegistryError::Backend(format!(
            "consul answered {status} for {what}: {}",
            String::from_utf8_lossy(body).trim()
        ))
    }

    pub(super) fn boolean(
        what: &str,
        status: StatusCode,
        body: &[u8],
    ) -> Result<bool, RegistryError> {
        match (status, body.trim_ascii()) {
            (StatusCode::OK, b"true") => Ok(true),
            (StatusCode::OK, b"false") => Ok(false),
            _ => Err(Self::unexpected(what, status, body)),
        }
    }
}
