//! The actions: deploy, promote, rollback. Each writes the journal before
//! every step with an external effect and undoes its own failures.

use crate::journal::{self, Intent, Undo, back_to, finish, undo_candidate};
use crate::steps::{
    Endpoint, color_containers, color_report, endpoint, ensure_running, info, join_addresses,
    join_ports, read_color, remove_color, replica_names, run_hook, stop_color, switch_proxy,
    wait_healthy, with_context, write_color,
};
use crate::{Settings, other};
use runner_sdk::journal::Phase;
use runner_sdk::{Error, Outcome, docker, kv};
use std::time::{Duration, Instant};

pub(crate) fn deploy(s: &Settings) -> Result<Outcome, Error> {
    let image = s.image.clone().ok_or_else(|| {
        Error::InvalidConfig("missing setting `image`; pass --config image=NAME:TAG".into())
    })?;
    let started = Instant::now();
    let (current, index) = read_color(s)?;
    let next = other(&current);
    let name = s.container(next);
    info(&format!(
        "deploying {image} as {name} (current color: {})",
        if current.is_empty() { "none" } else { &current }
    ));
    let intent = Intent {
        action: "deploy",
        known_good: current.clone(),
        candidate: next.to_string(),
        image: image.clone(),
        undo: Undo::Remove,
    };
    // The container of this color holds the version kept for rollback: it
    // is replaced, so there is nothing to roll back to until this one passes.
    intent.write(Phase::BeforeSwitch, "prepare")?;
    kv::delete(&s.previous_key())?;
    remove_color(s, next)?;
    let t_prepared = started.elapsed();
    intent.write(Phase::BeforeSwitch, "start")?;
    let (endpoints, times) = match start_candidate(s, &intent, started) {
        Ok(started) => started,
        Err(e) => return Err(fail_before_switch(s, next, e)),
    };
    if s.manual_promotion {
        kv::put(&s.promotion_key(), next.as_bytes())?;
        journal::clear()?;
        info(&format!(
            "{name} passed its pre-integration tests and waits for promotion; {} keeps serving",
            if current.is_empty() {
                "nothing"
            } else {
                &current
            }
        ));
        return Ok(runner_sdk::outcome(format!(
            "{name} runs {image} and waits for promotion (runner promote {})",
            s.service
        ))
        .with_output("paused", format!("{name} awaits promotion"))
        .with_output("color", current.clone())
        .with_output("candidate", next)
        .with_output(
            "container",
            if s.swarm {
                name.clone()
            } else {
                replica_names(s, next).join(",")
            },
        )
        .with_output("port", endpoints[0].port.to_string())
        .with_output("ports", join_ports(&endpoints))
        .with_output("addresses", join_addresses(&endpoints)));
    }
    switch_to(s, &intent, index, &endpoints, started, times)
        .map(|done| done.with_output("prepare_ms", t_prepared.as_millis().to_string()))
}

/// Run the candidate's replicas (all started first, so they come up
/// together; on named hosts spread over them, or over `hosts`), wait for
/// each one's health, then run the pre-integration tests against each: the
/// new color is complete and tested before any traffic moves.
fn start_candidate(
    s: &Settings,
    intent: &Intent,
    started: Instant,
) -> Result<(Vec<Endpoint>, [Duration; 3]), Error> {
    let (endpoints, t_start) = if s.swarm {
        // The service's tasks running, registered and healthy.
        let endpoints = crate::swarm::start(s, &intent.candidate, &intent.image)?;
        (endpoints, started.elapsed())
    } else {
        let endpoints = start_containers(s, intent)?;
        let t_start = started.elapsed();
        intent.write(Phase::BeforeSwitch, "health")?;
        for (name, at) in replica_names(s, &intent.candidate).iter().zip(&endpoints) {
            wait_healthy(s, name, at)?;
        }
        (endpoints, t_start)
    };
    let t_healthy = started.elapsed();
    intent.write(Phase::BeforeSwitch, "pre-tests")?;
    for at in &endpoints {
        run_hook(&s.pre_hook, &at.url())?;
    }
    Ok((endpoints, [t_start, t_healthy, started.elapsed()]))
}

/// The candidate's containers, started side by side by the host (on named
/// hosts spread over them, or pinned round-robin by `hosts`); any failure
/// fails the candidate (the caller removes every replica).
fn start_containers(s: &Settings, intent: &Intent) -> Result<Vec<Endpoint>, Error> {
    let names = replica_names(s, &intent.candidate);
    let specs: Vec<(Option<String>, docker::RunSpec)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let spec = docker::RunSpec {
                name: name.clone(),
                image: intent.image.clone(),
                env: s.env.clone(),
                labels: [("bluegreen.color".to_string(), intent.candidate.clone())]
                    .into_iter()
                    .chain(s.labels.clone())
                    .collect(),
                command: None,
                ports: vec![s.container_port],
                restart: s.restart,
                // Every replica is an instance of the color's service.
                service: Some(s.container(&intent.candidate)),
                tags: vec![intent.image.clone()],
            };
            // `hosts` pins the replicas round-robin; else the host spreads them.
            let host = (!s.hosts.is_empty()).then(|| s.hosts[i % s.hosts.len()].clone());
            (host, spec)
        })
        .collect();
    // Started side by side by the host; any failure fails the candidate
    // (the caller removes every replica).
    let mut endpoints = Vec::with_capacity(names.len());
    let mut placed = Vec::with_capacity(names.len());
    for started in docker::run_placed(&specs) {
        let started = started?;
        endpoints.push(endpoint(s, &started.container)?);
        if !started.host.is_empty() {
            placed.push(format!("{} on {}", started.container.name, started.host));
        }
    }
    if endpoints.len() != names.len() {
        return Err(Error::Failed(format!(
            "the engine started {} of {} replicas",
            endpoints.len(),
            names.len()
        )));
    }
    if !placed.is_empty() {
        info(&format!("started {}", placed.join(", ")));
    }
    Ok(endpoints)
}

/// The candidate failed before any traffic moved: remove it.
fn fail_before_switch(s: &Settings, color: &str, e: Error) -> Error {
    let name = s.container(color);
    let report = color_report(s, color);
    let undone = match remove_candidate(s, color).and_then(|_| journal::clear()) {
        Ok(()) => format!("{name} removed"),
        Err(u) => format!(
            "removing {name} failed too ({}); the next run of this stage (or `runner recover {}`) removes it",
            runner_sdk::describe(&u),
            s.service
        ),
    };
    with_context(
        e,
        &format!("{name} failed before the switch; proxy and color untouched, {undone}. {report}"),
    )
}

/// Remove every replica this deploy started, each on its own (a host that
/// does not answer keeps only its own), then any other container of the
/// color.
fn remove_candidate(s: &Settings, color: &str) -> Result<(), Error> {
    if s.swarm {
        return remove_color(s, color);
    }
    crate::steps::remove_all(&replica_names(s, color))?;
    remove_color(s, color)
}

/// Something failed after the proxy may have moved: back to the known-good
/// color. `live_since`: when the candidate started serving, if it did.
fn fail_after_switch(
    s: &Settings,
    intent: &Intent,
    e: Error,
    what: &str,
    live_since: Option<Instant>,
) -> Error {
    let name = s.container(&intent.candidate);
    let report = color_report(s, &intent.candidate);
    let serving = if intent.known_good.is_empty() {
        "nothing (first deploy)".to_string()
    } else {
        intent.known_good.clone()
    };
    let fate = match intent.undo {
        Undo::Remove => "removed",
        Undo::Stop => "stopped",
    };
    let undone = back_to(s, &intent.known_good, &intent.candidate, intent.undo)
        .and_then(|_| journal::clear());
    let served = live_since
        .map(|t| {
            format!(
                " ({name} served clients for {} ms)",
                t.elapsed().as_millis()
            )
        })
        .unwrap_or_default();
    let context = match undone {
        Ok(()) => format!(
            "{what}; switched back to {serving}{served}, color restored, {name} {fate}. {report}"
        ),
        Err(u) => format!(
            "{what}; switching back to {serving} failed too ({}): the journal keeps this deploy, and `runner recover {}` (or the next run of this stage) switches back",
            runner_sdk::describe(&u),
            s.service
        ),
    };
    with_context(e, &context)
}

/// Switch the proxy to the candidate, record the color, run the
/// post-integration tests through the proxy (switching back if anything
/// fails), then stop the old color after the drain.
fn switch_to(
    s: &Settings,
    intent: &Intent,
    index: u64,
    endpoints: &[Endpoint],
    started: Instant,
    before: [Duration; 3],
) -> Result<Outcome, Error> {
    let next = intent.candidate.as_str();
    let current = intent.known_good.as_str();
    let name = s.container(next);
    let [t_start, t_healthy, t_tested] = before;
    intent.write(Phase::Switching, "switch")?;
    if let Err(e) = switch_proxy(s, next, endpoints) {
        let what = format!("switching the proxy to {name} failed");
        return Err(fail_after_switch(s, intent, e, &what, None));
    }
    let t_switched = started.elapsed();
    let live_since = Some(Instant::now());
    if let Err(e) = intent.write(Phase::Switching, "color") {
        let what = "recording the deploy journal failed";
        return Err(fail_after_switch(s, intent, e, what, live_since));
    }
    if let Err(e) = write_color(s, next, index) {
        return Err(fail_after_switch(
            s,
            intent,
            e,
            "recording the color failed",
            live_since,
        ));
    }
    if intent.action != "rollback" {
        if let Err(e) = intent.write(Phase::Switching, "post-tests") {
            let what = "recording the deploy journal failed";
            return Err(fail_after_switch(s, intent, e, what, live_since));
        }
        let post = match &s.proxy_url {
            Some(url) => run_hook(&s.post_hook, url),
            None if s.post_hook.is_some() => Err(Error::InvalidConfig(
                "post-integration tests need `proxy_url` (the service's address through the proxy), or post_hook=none".into(),
            )),
            None => Ok(None),
        };
        if let Err(e) = post {
            let what = format!("{name} failed after the switch");
            return Err(fail_after_switch(s, intent, e, &what, live_since));
        }
    }
    let t_post = started.elapsed();

    if let Err(e) = intent.write(Phase::Finishing, "stop-old") {
        let what = "recording the deploy journal failed";
        return Err(fail_after_switch(s, intent, e, what, live_since));
    }
    if !current.is_empty() {
        std::thread::sleep(s.drain);
    }
    let t_finishing = started.elapsed();
    if let Err(e) = finish(s, current, next) {
        return Err(with_context(
            e,
            &format!(
                "{} now serves {name}, but finishing failed (stopping {} or recording it for rollback); the journal keeps this deploy: `runner recover {}` (or the next run of this stage) finishes it",
                s.service,
                s.container(current),
                s.service
            ),
        ));
    }
    journal::clear()?;
    let t_finished = started.elapsed() - t_finishing;
    // Parts a promotion or rollback did not run (start, health, pre-tests) are left out.
    let timings = [
        ("start", t_start),
        ("healthy", t_healthy - t_start),
        ("pre-tests", t_tested - t_healthy),
        ("switch", t_switched - t_tested),
        ("post-tests", t_post - t_switched),
        ("total", started.elapsed()),
    ]
    .iter()
    .filter(|(_, d)| !d.is_zero())
    .map(|(what, d)| format!("{what} {}ms", d.as_millis()))
    .collect::<Vec<_>>()
    .join(", ");
    let image = &intent.image;
    let replicas = match endpoints.len() {
        1 => String::new(),
        n => format!(", {n} replicas"),
    };
    Ok(runner_sdk::outcome(format!(
        "{} now serves {image} from {name}{replicas} ({timings})",
        s.service
    ))
    .with_output("color", next)
    .with_output("previous", current)
    .with_output(
        "container",
        color_containers(s, next)
            .ok()
            .filter(|_| !s.swarm)
            .map(|c| {
                c.iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or(name),
    )
    .with_output(
        "port",
        endpoints.first().map(|e| e.port).unwrap_or(0).to_string(),
    )
    .with_output("ports", join_ports(endpoints))
    .with_output("addresses", join_addresses(endpoints))
    .with_output("start_ms", t_start.as_millis().to_string())
    .with_output("healthy_ms", (t_healthy - t_start).as_millis().to_string())
    .with_output(
        "pre_tests_ms",
        (t_tested - t_healthy).as_millis().to_string(),
    )
    .with_output("switch_ms", (t_switched - t_tested).as_millis().to_string())
    .with_output(
        "post_tests_ms",
        (t_post - t_switched).as_millis().to_string(),
    )
    .with_output("finish_ms", t_finished.as_millis().to_string()))
}

/// `action=promote`: the candidate a manual-promotion deploy left running.
pub(crate) fn promote(s: &Settings) -> Result<Outcome, Error> {
    let started = Instant::now();
    let next = match kv::get(&s.promotion_key())? {
        Some(entry) => match String::from_utf8_lossy(&entry.value).as_ref() {
            "blue" => "blue",
            "green" => "green",
            other => {
                return Err(Error::Failed(format!(
                    "{} holds \"{other}\", not a color",
                    s.promotion_key()
                )));
            }
        },
        None => {
            return Err(Error::NotFound(format!(
                "no deploy of {} waits for promotion (deploy with promotion=manual first)",
                s.service
            )));
        }
    };
    let (current, index) = read_color(s)?;
    if current == next {
        return Err(Error::Failed(format!(
            "{} names {next}, which already serves; nothing to promote (clear it with `runner rollback {}`)",
            s.promotion_key(),
            s.service
        )));
    }
    let name = s.container(next);
    let cannot = |e| with_context(e, &format!("{name} cannot be promoted; deploy again"));
    let (endpoints, image) = if s.swarm {
        crate::swarm::endpoints(s, next)?
    } else {
        let containers = color_containers(s, next)?;
        let endpoints = containers
            .iter()
            .map(|c| endpoint(s, c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(cannot)?;
        let image = containers
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        (endpoints, image)
    };
    if endpoints.is_empty() {
        return Err(cannot(Error::NotFound(format!("nothing of {name} runs"))));
    }
    let intent = Intent {
        action: "promote",
        known_good: current,
        candidate: next.to_string(),
        image,
        undo: Undo::Remove,
    };
    let outcome = switch_to(s, &intent, index, &endpoints, started, [Duration::ZERO; 3]);
    // Promoted or undone: either way nothing waits any more.
    if let Err(e) = kv::delete(&s.promotion_key()) {
        runner_sdk::warn(&format!(
            "could not clear {}: {}",
            s.promotion_key(),
            runner_sdk::describe(&e)
        ));
    }
    outcome
}

/// `action=rollback` while a candidate waits for promotion: remove it.
fn abort_promotion(s: &Settings, next: &str) -> Result<Outcome, Error> {
    let name = s.container(next);
    undo_candidate(s, next, Undo::Remove)?;
    kv::delete(&s.promotion_key())?;
    let (current, _) = read_color(s)?;
    Ok(runner_sdk::outcome(format!(
        "{name} will not be promoted: removed; {} keeps serving",
        if current.is_empty() {
            "nothing"
        } else {
            &current
        }
    ))
    .with_output("color", current))
}

/// `action=rollback`: back to the version that served before the current one.
pub(crate) fn rollback(s: &Settings) -> Result<Outcome, Error> {
    if let Some(pending) = kv::get(&s.promotion_key())? {
        let pending = String::from_utf8_lossy(&pending.value).into_owned();
        // A stale record naming the serving color must not remove it.
        if pending != read_color(s)?.0 {
            return abort_promotion(s, &pending);
        }
        kv::delete(&s.promotion_key())?;
    }
    let started = Instant::now();
    let (current, index) = read_color(s)?;
    if current.is_empty() {
        return Err(Error::NotFound(format!(
            "{} was never deployed: nothing to roll back to",
            s.service
        )));
    }
    let previous = other(&current);
    let kept = kv::get(&s.previous_key())?.map(|e| e.value);
    if kept.as_deref() != Some(previous.as_bytes()) {
        return Err(Error::NotFound(format!(
            "{} has no version to roll back to: the one before {current} was replaced by a deploy that did not pass, or never existed; deploy the version you want",
            s.service
        )));
    }
    let name = s.container(previous);
    let intent = Intent {
        action: "rollback",
        known_good: current.clone(),
        candidate: previous.to_string(),
        image: String::new(),
        undo: Undo::Stop,
    };
    intent.write(Phase::BeforeSwitch, "start")?;
    let endpoints = match ensure_running(s, previous) {
        Ok(endpoints) => endpoints,
        Err(e) => {
            let report = color_report(s, previous);
            let undone = stop_color(s, previous).and_then(|_| journal::clear());
            let note = match undone {
                Ok(()) => String::new(),
                Err(u) => format!(" (stopping it again failed: {})", runner_sdk::describe(&u)),
            };
            return Err(with_context(
                e,
                &format!("{name} did not come back healthy; nothing switched{note}. {report}"),
            ));
        }
    };
    let outcome = switch_to(s, &intent, index, &endpoints, started, [Duration::ZERO; 3])?;
    Ok(
        runner_sdk::outcome(format!("{} rolled back to {previous} ({name})", s.service))
            .with_output("color", previous)
            .with_output("previous", current)
            .with_output("port", endpoints[0].port.to_string())
            .with_output("ports", join_ports(&endpoints))
            .with_output("addresses", join_addresses(&endpoints))
            .with_output(
                "container",
                outcome
                    .outputs
                    .iter()
                    .find(|(k, _)| k == "container")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            ),
    )
}
