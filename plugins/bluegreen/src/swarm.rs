//! `engine=swarm`: each color is a Swarm service (`<service>-<color>`) of
//! `replicas` tasks, each publishing its port in host mode, so every task
//! is reached at its node's address before any traffic moves. The old
//! color is scaled to zero after the switch (its spec kept), and scaling it
//! back up is the rollback: runner never relies on Swarm's own
//! `rollback=previous`, which fails after an automatic rollback.

use crate::Settings;
use crate::steps::{Endpoint, info, wait_http_healthy};
use runner_sdk::{Error, swarm};
use std::time::{Duration, Instant};

/// How often task states are polled.
const POLL: Duration = Duration::from_millis(250);

/// Where a running task's service port is reached.
pub(crate) fn task_endpoint(s: &Settings, t: &swarm::Task) -> Option<Endpoint> {
    t.ports
        .iter()
        .find(|p| p.container_port == s.container_port && p.host_port != 0)
        .map(|p| Endpoint {
            address: match p.host_ip.as_str() {
                "" | "0.0.0.0" | "::" => "127.0.0.1".to_string(),
                ip => ip.to_string(),
            },
            port: p.host_port,
        })
}

fn running(t: &swarm::Task) -> bool {
    t.state == "running" && t.desired_state == "running"
}

/// A task that ended badly: failed, rejected, or exited.
fn failed(t: &swarm::Task) -> bool {
    matches!(t.state.as_str(), "failed" | "rejected")
}

fn describe_task(t: &swarm::Task) -> String {
    let exit = t
        .exit_code
        .map(|c| format!(", exit code {c}"))
        .unwrap_or_default();
    let ports: Vec<String> = t
        .ports
        .iter()
        .map(|p| format!(" at {}:{}", p.host_ip, p.host_port))
        .collect();
    format!(
        "task {} (slot {}, node {}{}) {}{exit}: {}",
        short(&t.id),
        t.slot,
        short(&t.node_id),
        ports.first().map(String::as_str).unwrap_or(""),
        t.state,
        if t.message.is_empty() {
            "no message"
        } else {
            &t.message
        }
    )
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The service's inspection, `None` when it does not exist.
pub(crate) fn find(name: &str) -> Result<Option<swarm::Service>, Error> {
    match swarm::inspect(name) {
        Ok(service) => Ok(Some(service)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Wait until `want` tasks of `name` run `image` (when given) with a
/// published port, then register them; their endpoints. Fails at once when
/// a task of this image fails (Swarm would retry it forever) — checked
/// before counting the running ones, which may be that failure's
/// replacements — and at the deadline with what the tasks say (a stuck
/// `pending` names why). Tasks in `earlier` (the service's history before
/// this wait) are not this wait's failures.
pub(crate) fn wait_tasks(
    s: &Settings,
    name: &str,
    want: u32,
    image: Option<&str>,
    earlier: &[String],
    deadline: Duration,
) -> Result<Vec<Endpoint>, Error> {
    let started = Instant::now();
    loop {
        let service = swarm::inspect(name)?;
        let of_image = |t: &&swarm::Task| image.is_none_or(|i| t.image == i);
        if let Some(bad) = service
            .tasks
            .iter()
            .filter(of_image)
            .filter(|t| !earlier.contains(&t.id))
            .find(|t| failed(t))
        {
            return Err(Error::Failed(format!(
                "{name}: {} (the service's last lines: {})",
                describe_task(bad),
                logs(s, name)
            )));
        }
        let ready: Vec<&swarm::Task> = service
            .tasks
            .iter()
            .filter(|t| running(t) && task_endpoint(s, t).is_some())
            .filter(of_image)
            .collect();
        if ready.len() as u32 >= want {
            let registered = swarm::register(name, None)?;
            let mut endpoints: Vec<(u32, Endpoint)> = registered
                .iter()
                .filter(|t| image.is_none_or(|i| t.image == i))
                .filter_map(|t| task_endpoint(s, t).map(|e| (t.slot, e)))
                .collect();
            endpoints.sort_by_key(|(slot, _)| *slot);
            return Ok(endpoints.into_iter().map(|(_, e)| e).collect());
        }
        if started.elapsed() > deadline {
            let states: Vec<String> = service
                .tasks
                .iter()
                .filter(|t| t.desired_state == "running")
                .map(describe_task)
                .collect();
            return Err(Error::Timeout(format!(
                "{name}: {} of {want} tasks running after {:?}; {}",
                ready.len(),
                deadline,
                if states.is_empty() {
                    "no task scheduled".to_string()
                } else {
                    states.join("; ")
                }
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// Fails when the task serving `at` no longer runs: a task that exits
/// after it was seen running is replaced by Swarm on another port, and a
/// health wait on its address would poll a dead port until its deadline.
pub(crate) fn still_running(s: &Settings, name: &str, at: &Endpoint) -> Result<(), Error> {
    let service = swarm::inspect(name)?;
    let at_address = || {
        service
            .tasks
            .iter()
            .filter(|t| task_endpoint(s, t).as_ref() == Some(at))
    };
    match at_address()
        .find(|t| running(t))
        .or_else(|| at_address().next())
    {
        Some(t) if running(t) => Ok(()),
        Some(t) => Err(Error::Failed(format!(
            "{name}: {} before answering its health path (the service's last lines: {})",
            describe_task(t),
            logs(s, name)
        ))),
        // An ended task's status no longer carries its ports: name the
        // service's ended tasks instead (their exit codes say why).
        None => {
            let ended: Vec<String> = service
                .tasks
                .iter()
                .filter(|t| !running(t) && t.exit_code.is_some())
                .take(3)
                .map(describe_task)
                .collect();
            let ended = match ended.is_empty() {
                true => String::new(),
                false => format!("; ended: {}", ended.join("; ")),
            };
            Err(Error::Failed(format!(
                "{name}: no task serves {} any more{ended} (the service's last lines: {})",
                at.url(),
                logs(s, name)
            )))
        }
    }
}

pub(crate) fn logs(s: &Settings, name: &str) -> String {
    match swarm::logs(name, s.logs_tail) {
        Ok(text) if text.trim().is_empty() => "(no log output)".into(),
        Ok(text) => text.trim_end().to_string(),
        Err(e) => format!("(logs unavailable: {})", runner_sdk::describe(&e)),
    }
}

fn spec(s: &Settings, color: &str, image: &str) -> swarm::ServiceSpec {
    swarm::ServiceSpec {
        name: s.container(color),
        image: image.to_string(),
        env: s.env.clone(),
        labels: [("bluegreen.color".to_string(), color.to_string())]
            .into_iter()
            .chain(s.labels.clone())
            .collect(),
        command: None,
        ports: vec![s.container_port],
        replicas: s.replicas,
        health_check: s.health_cmd.as_ref().map(|command| swarm::HealthCheck {
            command: command.clone(),
            interval_ms: 500,
            timeout_ms: 2000,
            retries: 3,
            start_period_ms: s.health_timeout.as_millis().min(u32::MAX as u128) as u32,
        }),
        service: Some(s.container(color)),
        tags: vec![image.to_string()],
    }
}

/// The candidate color as a new service: its tasks running, registered,
/// healthy (each answering its health path at its own address).
pub(crate) fn start(s: &Settings, color: &str, image: &str) -> Result<Vec<Endpoint>, Error> {
    let name = s.container(color);
    swarm::create(&spec(s, color, image))?;
    let endpoints = wait_tasks(s, &name, s.replicas, Some(image), &[], s.health_timeout)?;
    info(&format!(
        "{name}: {} tasks running at {}",
        endpoints.len(),
        crate::steps::join_addresses(&endpoints)
    ));
    for at in &endpoints {
        wait_http_healthy(s, &name, at, &|| still_running(s, &name, at))?;
    }
    Ok(endpoints)
}

/// Remove `color`'s service (gone already is fine).
pub(crate) fn remove(s: &Settings, color: &str) -> Result<(), Error> {
    swarm::remove(&s.container(color))
}

/// Scale `color`'s service to zero: its spec stays, for a rollback.
pub(crate) fn stop(s: &Settings, color: &str) -> Result<(), Error> {
    match swarm::scale(&s.container(color), 0) {
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Scale `color`'s service back up (the rollback) and wait for its tasks.
pub(crate) fn ensure_running(s: &Settings, color: &str) -> Result<Vec<Endpoint>, Error> {
    let name = s.container(color);
    let Some(service) = find(&name)? else {
        return Err(Error::NotFound(format!("no Swarm service {name} exists")));
    };
    if service.replicas != s.replicas {
        swarm::scale(&name, s.replicas)?;
    }
    let earlier: Vec<String> = service.tasks.into_iter().map(|t| t.id).collect();
    let endpoints = wait_tasks(s, &name, s.replicas, None, &earlier, s.health_timeout)?;
    for at in &endpoints {
        wait_http_healthy(s, &name, at, &|| still_running(s, &name, at))?;
    }
    Ok(endpoints)
}

/// The running tasks' endpoints of `color` (a promotion's).
pub(crate) fn endpoints(s: &Settings, color: &str) -> Result<(Vec<Endpoint>, String), Error> {
    let name = s.container(color);
    let Some(service) = find(&name)? else {
        return Ok((Vec::new(), String::new()));
    };
    let endpoints = service
        .tasks
        .iter()
        .filter(|t| running(t))
        .filter_map(|t| task_endpoint(s, t))
        .collect();
    Ok((endpoints, service.image))
}

/// What `color`'s tasks say, for an error.
pub(crate) fn report(s: &Settings, color: &str) -> String {
    let name = s.container(color);
    match find(&name) {
        Ok(None) => format!("(no Swarm service {name} left)"),
        Err(e) => format!("(tasks unavailable: {})", runner_sdk::describe(&e)),
        Ok(Some(service)) => {
            let tasks: Vec<String> = service.tasks.iter().take(8).map(describe_task).collect();
            format!(
                "Tasks of {name}: {}\nLast log lines of {name}:\n{}",
                tasks.join("; "),
                logs(s, &name)
            )
        }
    }
}

/// The engine must be a Swarm manager with a node ready.
pub(crate) fn preflight() -> Result<(), Error> {
    let nodes = swarm::nodes().map_err(|e| {
        crate::steps::with_context(
            e,
            "engine=swarm needs runner's engine to be a Swarm manager",
        )
    })?;
    if !nodes.iter().any(|n| n.state == "ready") {
        return Err(Error::Unavailable(format!(
            "no node of the Swarm is ready ({} nodes)",
            nodes.len()
        )));
    }
    Ok(())
}
