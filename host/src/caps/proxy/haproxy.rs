//! The `haproxy` driver: a backend's servers are changed in place through
//! HAProxy's runtime API (`stats socket PATH level admin`), so a switch
//! closes no client connection and takes milliseconds.
//!
//! The backend declares free server slots, e.g.
//! `server-template s 1-8 127.0.0.1:1 disabled`. A switch puts each new
//! server into a free slot (`set server B/S addr A port P`, `state ready`),
//! then puts the slots that served before into maintenance: for a moment
//! both colors serve, never neither. A server already serving is kept. The
//! switch ends by reading the backend's state back: exactly the servers asked
//! for must be ready. A crash between the two commands leaves both colors
//! ready; the recovering switch keeps the right one and retires the other.

use super::ProxyConfig;
use crate::bindings::PluginError;
use crate::bindings::runner::plugin::proxy;
use crate::faults::crash_point;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes read back from one command.
const MAX_REPLY: u64 = 4 << 20;

/// One server slot of a backend, as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub address: String,
    pub port: u16,
    /// Administratively ready (not in maintenance or drain).
    pub ready: bool,
}

fn check_backend(proxy: &str, backend: &str) -> Result<(), PluginError> {
    crate::names::proxy_backend(backend)
        .map(|_| ())
        .map_err(|e| e.to_plugin_error(&format!("proxy {proxy}")))
}

/// Send one command line; HAProxy answers and closes the connection.
async fn command(socket: &Path, timeout: Duration, line: &str) -> Result<String, PluginError> {
    let shown = socket.display();
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await?;
        stream.write_all(line.as_bytes()).await?;
        stream.write_all(b"\n").await?;
        let mut reply = String::new();
        stream.take(MAX_REPLY).read_to_string(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(PluginError::Unavailable(format!(
            "haproxy admin socket {shown}: {e}"
        ))),
        Err(_) => Err(PluginError::Timeout(format!(
            "haproxy admin socket {shown} did not answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Whether a reply to `set server` reports a failure.
fn reply_failed(reply: &str) -> bool {
    let lower = reply.to_ascii_lowercase();
    [
        "no such", "denied", "unknown", "invalid", "can't", "require", "error",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

/// The slots of `backend` (`show servers state`, format 1).
pub async fn servers_state(
    socket: &Path,
    backend: &str,
    timeout: Duration,
) -> Result<Vec<ServerState>, PluginError> {
    check_backend("haproxy", backend)?;
    let reply = command(socket, timeout, &format!("show servers state {backend}")).await?;
    let mut servers = Vec::new();
    if reply.contains("Can't find backend") {
        return Ok(servers);
    }
    for line in reply.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "1" {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 19 {
            return Err(PluginError::Failed(format!(
                "haproxy: unexpected answer to `show servers state {backend}`: {}",
                reply.chars().take(500).collect::<String>()
            )));
        }
        servers.push(ServerState {
            name: fields[3].to_string(),
            address: fields[4].to_string(),
            port: fields[18].parse().unwrap_or(0),
            // srv_admin_state flags; 0x04 only records that the config
            // declared it `disabled`, which `state ready` overrides.
            ready: fields[6]
                .parse::<u32>()
                .is_ok_and(|flags| flags & !0x04 == 0),
        });
    }
    Ok(servers)
}

pub(super) async fn switch(
    config: &ProxyConfig,
    socket: &Path,
    upstream: &proxy::Upstream,
) -> Result<String, PluginError> {
    let proxy = config.name.as_str();
    let backend = upstream.name.as_str();
    check_backend(proxy, backend)?;
    let timeout = config.timeout;
    let slots = servers_state(socket, backend, timeout).await?;
    if slots.is_empty() {
        return Err(PluginError::NotFound(format!(
            "proxy {proxy}: HAProxy has no backend {backend} with server slots; declare one with e.g. `server-template s 1-8 127.0.0.1:1 disabled`"
        )));
    }
    let serving = |s: &ServerState, want: &proxy::Server| {
        s.ready && s.address == want.address && s.port == want.port
    };
    let mut free: Vec<&ServerState> = slots.iter().filter(|s| !s.ready).collect();
    free.reverse();
    let mut bring_up = Vec::new();
    for want in &upstream.servers {
        if slots.iter().any(|s| serving(s, want)) {
            continue;
        }
        let slot = free.pop().ok_or_else(|| {
            PluginError::Failed(format!(
                "proxy {proxy}: backend {backend} has {} server slots, too few for {} new servers beside the serving ones; add slots to its server-template",
                slots.len(),
                upstream.servers.len()
            ))
        })?;
        bring_up.push(format!(
            "set server {backend}/{name} addr {} port {}; set server {backend}/{name} state ready",
            want.address,
            want.port,
            name = slot.name
        ));
    }
    let retire: Vec<String> = slots
        .iter()
        .filter(|s| s.ready && !upstream.servers.iter().any(|w| serving(s, w)))
        .map(|s| format!("set server {backend}/{} state maint", s.name))
        .collect();
    let mut output = String::new();
    for (commands, point) in [(bring_up, "proxy:staged"), (retire, "proxy:live")] {
        if !commands.is_empty() {
            let reply = command(socket, timeout, &commands.join("; ")).await?;
            if reply_failed(&reply) {
                return Err(PluginError::Failed(format!(
                    "proxy {proxy}: HAProxy refused `{}`: {}",
                    commands.join("; "),
                    reply.trim()
                )));
            }
            output.push_str(&reply);
        }
        crash_point(point);
    }
    // Verify: exactly the servers asked for are ready.
    let after = servers_state(socket, backend, timeout).await?;
    let ready: Vec<String> = after
        .iter()
        .filter(|s| s.ready)
        .map(|s| format!("{}:{}", s.address, s.port))
        .collect();
    let mut wanted: Vec<String> = upstream
        .servers
        .iter()
        .map(|s| format!("{}:{}", s.address, s.port))
        .collect();
    let mut got = ready.clone();
    wanted.sort();
    got.sort();
    if wanted != got {
        return Err(PluginError::Failed(format!(
            "proxy {proxy}: after the switch backend {backend} serves [{}], not [{}]",
            got.join(", "),
            wanted.join(", ")
        )));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_cannot_carry_commands() {
        assert!(check_backend("p", "books-ms").is_ok());
        for bad in ["", "a b", "a;shutdown sessions", "a\nb", "a/b"] {
            assert!(check_backend("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failure_replies_are_recognised() {
        assert!(reply_failed("No such server.\n"));
        assert!(reply_failed("Permission denied\n"));
        assert!(!reply_failed(
            "IP changed from '127.0.0.1' to '127.0.0.1', port changed from '1' to '32768' by 'stats socket command'\n"
        ));
        assert!(!reply_failed("\n"));
    }
}
