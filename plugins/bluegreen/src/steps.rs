//! The building blocks every action uses: the color record, containers,
//! health, the proxy switch, hooks.

use crate::{COLORS, Settings};
use runner_sdk::{Error, docker, hooks, http, kv, proxy, template};
use std::time::{Duration, Instant};

pub(crate) fn info(message: &str) {
    runner_sdk::info(message);
}

/// The stored color and its modify index (0 when never deployed).
pub(crate) fn read_color(s: &Settings) -> Result<(String, u64), Error> {
    match kv::get(&s.color_key())? {
        None => Ok((String::new(), 0)),
        Some(entry) => {
            let color = String::from_utf8_lossy(&entry.value).trim().to_string();
            if !color.is_empty() && !COLORS.contains(&color.as_str()) {
                return Err(Error::InvalidConfig(format!(
                    "{} holds \"{color}\", expected blue or green; fix it with `runner kv put {} blue`",
                    s.color_key(),
                    s.color_key()
                )));
            }
            Ok((color, entry.modify_index))
        }
    }
}

/// Write the color only if nobody else did since we read it.
pub(crate) fn write_color(s: &Settings, color: &str, expected: u64) -> Result<u64, Error> {
    if !kv::cas(&s.color_key(), color.as_bytes(), expected)? {
        return Err(Error::Conflict(format!(
            "{} changed during the deploy (another deploy running?)",
            s.color_key()
        )));
    }
    Ok(kv::get(&s.color_key())?
        .map(|e| e.modify_index)
        .unwrap_or(0))
}

/// Set (or, for "", delete) a plain key of this service.
pub(crate) fn put_or_delete(key: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        kv::delete(key).map(|_| ())
    } else {
        kv::put(key, value.as_bytes()).map(|_| ())
    }
}

/// Where a replica's service port is reached: its host's address (127.0.0.1
/// on a single engine) and the published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) address: String,
    pub(crate) port: u16,
}

impl Endpoint {
    pub(crate) fn url(&self) -> String {
        if self.address.contains(':') {
            format!("http://[{}]:{}", self.address, self.port)
        } else {
            format!("http://{}:{}", self.address, self.port)
        }
    }
}

pub(crate) fn endpoint(s: &Settings, c: &docker::Container) -> Result<Endpoint, Error> {
    if !c.running {
        return Err(Error::Failed(format!(
            "{} is not running ({}, exit code {})",
            c.name,
            c.state,
            c.exit_code
                .map(|code| code.to_string())
                .unwrap_or_else(|| "none".into())
        )));
    }
    let binding = c
        .ports
        .iter()
        .find(|p| p.container_port == s.container_port)
        .ok_or_else(|| {
            Error::Failed(format!(
                "container {} publishes no port {}",
                c.name, s.container_port
            ))
        })?;
    // An engine that publishes on every interface is reached on loopback.
    let address = match binding.host_ip.as_str() {
        "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
        ip => ip.to_string(),
    };
    Ok(Endpoint {
        address,
        port: binding.host_port,
    })
}

pub(crate) fn logs(s: &Settings, name: &str) -> String {
    match docker::logs(name, s.logs_tail) {
        Ok(text) if text.trim().is_empty() => "(no log output)".into(),
        Ok(text) => text.trim_end().to_string(),
        Err(e) => format!("(logs unavailable: {})", runner_sdk::describe(&e)),
    }
}

/// Poll the health path until it answers 200; fail early if the container exits.
pub(crate) fn wait_healthy(s: &Settings, name: &str, at: &Endpoint) -> Result<Duration, Error> {
    wait_http_healthy(s, name, at, &|| {
        let c = docker::inspect(name)?;
        if c.running {
            Ok(())
        } else {
            Err(Error::Failed(format!(
                "{name} exited (code {}) before answering its health path",
                c.exit_code.unwrap_or(-1)
            )))
        }
    })
}

/// Poll `at`'s health path until it answers 200; `alive` fails early when
/// what serves it is gone.
pub(crate) fn wait_http_healthy(
    s: &Settings,
    name: &str,
    at: &Endpoint,
    alive: &dyn Fn() -> Result<(), Error>,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let url = format!("{}{}", at.url(), s.health_path);
    let mut last = String::from("no answer yet");
    while started.elapsed() < s.health_timeout {
        let response = http::send(&http::Request {
            method: "GET".into(),
            url: url.clone(),
            headers: vec![],
            body: None,
            timeout_ms: Some(1000),
        });
        match response {
            Ok(r) if r.status == 200 => return Ok(started.elapsed()),
            Ok(r) => last = format!("status {}", r.status),
            Err(e) => last = runner_sdk::describe(&e),
        }
        alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Failed(format!(
        "{name} did not answer {url} with 200 within {:?} (last: {last})",
        s.health_timeout
    )))
}

/// The upstream for `color`: the configured template file, or the seed's
/// (the color's registered instances).
fn upstream_source(s: &Settings, color: &str) -> template::Source {
    match &s.upstream_template {
        Some(path) => template::Source::File(path.replace("{color}", color)),
        None => template::Source::Inline(format!(
            "upstream {service} {{\n {{{{range service \"{service}-{color}\" \"any\"}}}}\n server {{{{.Address}}}}:{{{{.Port}}}};\n {{{{end}}}}\n}}\n",
            service = s.service
        )),
    }
}

/// The containers a deploy of `color` runs: `<service>-<color>` alone, or
/// `<service>-<color>-1` .. `-N`.
pub(crate) fn replica_names(s: &Settings, color: &str) -> Vec<String> {
    let base = s.container(color);
    if s.replicas == 1 {
        return vec![base];
    }
    (1..=s.replicas).map(|i| format!("{base}-{i}")).collect()
}

/// Where a container name stands among its color's: 0 for `<base>`, N for `<base>-N`.
fn replica_index(base: &str, name: &str) -> Option<u32> {
    if name == base {
        return Some(0);
    }
    let n = name.strip_prefix(base)?.strip_prefix('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `color`'s containers as they are, whatever replica count deployed them,
/// in replica order.
pub(crate) fn color_containers(s: &Settings, color: &str) -> Result<Vec<docker::Container>, Error> {
    let base = s.container(color);
    let mut found: Vec<(u32, docker::Container)> = docker::list(Some(&format!("{base}*")), None)?
        .into_iter()
        .filter_map(|c| replica_index(&base, &c.name).map(|i| (i, c)))
        .collect();
    found.sort_by_key(|(i, _)| *i);
    Ok(found.into_iter().map(|(_, c)| c).collect())
}

/// Remove every container of `color` (side by side), or its Swarm service.
pub(crate) fn remove_color(s: &Settings, color: &str) -> Result<(), Error> {
    if s.swarm {
        return crate::swarm::remove(s, color);
    }
    let names: Vec<String> = color_containers(s, color)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    remove_all(&names)
}

/// Remove `names` side by side; one already gone is fine. Every removal is
/// tried; the first failure, if any.
pub(crate) fn remove_all(names: &[String]) -> Result<(), Error> {
    first_failure(names, docker::remove_all(names, true))
}

/// Stop every container of `color` (kept, for a rollback), side by side;
/// on a Swarm, scale its service to zero.
pub(crate) fn stop_color(s: &Settings, color: &str) -> Result<(), Error> {
    if s.swarm {
        return crate::swarm::stop(s, color);
    }
    let names: Vec<String> = color_containers(s, color)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    first_failure(&names, docker::stop_all(&names, s.stop_timeout))
}

fn first_failure(names: &[String], results: Vec<Result<(), Error>>) -> Result<(), Error> {
    for (name, result) in names.iter().zip(results) {
        match result {
            Ok(()) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(with_context(e, &format!("(container {name})"))),
        }
    }
    Ok(())
}

/// Exit codes and last log lines of `color`'s containers, for an error.
pub(crate) fn color_report(s: &Settings, color: &str) -> String {
    if s.swarm {
        return crate::swarm::report(s, color);
    }
    let containers = match color_containers(s, color) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => return format!("(no container of {} left)", s.container(color)),
        Err(e) => return format!("(logs unavailable: {})", runner_sdk::describe(&e)),
    };
    containers
        .iter()
        .map(|c| {
            let exit = if c.running {
                String::new()
            } else {
                format!(
                    " ({} with exit code {})",
                    c.state,
                    c.exit_code
                        .map(|code| code.to_string())
                        .unwrap_or_else(|| "none".into())
                )
            };
            format!("Last log lines of {}{exit}:\n{}", c.name, logs(s, &c.name))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Point the proxy at `color`, served at `endpoints`: one atomic, verified
/// switch (the proxy reloads when it must, always after a new file).
pub(crate) fn switch_proxy(s: &Settings, color: &str, endpoints: &[Endpoint]) -> Result<(), Error> {
    let file = s
        .upstream_file
        .clone()
        .unwrap_or_else(|| format!("{}.conf", s.service));
    let report = proxy::switch(
        &s.proxy,
        &proxy::Upstream {
            name: s.upstream.clone(),
            servers: endpoints
                .iter()
                .map(|e| proxy::Server {
                    address: e.address.clone(),
                    port: e.port,
                })
                .collect(),
            file: Some(proxy::UpstreamFile {
                name: file,
                template: upstream_source(s, color),
            }),
        },
    )?;
    info(&format!(
        "proxy {} now sends {} to {color} ({}ms)",
        s.proxy, s.service, report.duration_ms
    ));
    Ok(())
}

/// Where `color`'s containers serve, starting the stopped ones (all
/// first, then waiting for their health, so they come up together).
pub(crate) fn ensure_running(s: &Settings, color: &str) -> Result<Vec<Endpoint>, Error> {
    if s.swarm {
        return crate::swarm::ensure_running(s, color);
    }
    let containers = color_containers(s, color)?;
    if containers.is_empty() {
        return Err(Error::NotFound(format!(
            "no container of {} exists",
            s.container(color)
        )));
    }
    let mut endpoints = Vec::with_capacity(containers.len());
    let mut started = Vec::new();
    for c in containers {
        if c.running {
            endpoints.push(endpoint(s, &c)?);
        } else {
            let c = docker::start(&c.name)?;
            let at = endpoint(s, &c)?;
            started.push((c.name.clone(), at.clone()));
            endpoints.push(at);
        }
    }
    for (name, at) in &started {
        wait_healthy(s, name, at)?;
    }
    Ok(endpoints)
}

/// The endpoints' ports as an output: comma-separated.
pub(crate) fn join_ports(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| e.port.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The endpoints as an output: `ADDRESS:PORT`, comma-separated.
pub(crate) fn join_addresses(endpoints: &[Endpoint]) -> String {
    endpoints
        .iter()
        .map(|e| e.url().trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn run_hook(name: &Option<String>, base_url: &str) -> Result<Option<String>, Error> {
    let Some(hook) = name else { return Ok(None) };
    info(&format!("running hook {hook} against {base_url}"));
    let outcome = hooks::run(hook, &[("base_url".to_string(), base_url.to_string())])?;
    Ok(Some(outcome.message))
}

/// Keep the error's kind, add what this stage did about it.
pub(crate) fn with_context(e: Error, context: &str) -> Error {
    let wrap = |m: String| format!("{m}\n{context}");
    match e {
        Error::Denied(m) => Error::Denied(wrap(m)),
        Error::NotFound(m) => Error::NotFound(wrap(m)),
        Error::Conflict(m) => Error::Conflict(wrap(m)),
        Error::InvalidConfig(m) => Error::InvalidConfig(wrap(m)),
        Error::Failed(m) => Error::Failed(wrap(m)),
        Error::Timeout(m) => Error::Timeout(wrap(m)),
        Error::Unavailable(m) => Error::Unavailable(wrap(m)),
    }
}
