//! `strategy=rolling` (engine=swarm): the serving color's service updated in
//! place by Swarm's own rolling update: start-first, one task at a time,
//! each watched for `update_monitor` (and gated on `health_cmd` when set),
//! rolled back by Swarm when a task fails.
//!
//! runner follows it: each new task is health-checked and pre-tested at its
//! own address before the proxy sends it traffic; the proxy names exactly
//! the running old tasks and the tested new ones as they change. Swarm
//! stops a slot's old task as soon as its new one is healthy and moves to
//! the next slot after `update_delay`, so the delay is runner's window to
//! test each new task while the other old ones serve (hence at least two
//! replicas; a failed test is reverted before the next old task stops). An update
//! still `updating` after `update_timeout` is stuck (a host-mode port
//! already in use leaves a task pending forever while Swarm keeps saying
//! `updating`): runner never reports it done, but updates the service back
//! to the image that served. So does a failed pre-test or post-test, and a
//! rollback (`action=rollback`), always as a new update to the previous
//! image: Swarm's `rollback=previous` fails after an automatic rollback.
//!
//! The first deploy, with nothing serving yet, creates the service as a
//! blue-green deploy does.

use crate::Settings;
use crate::steps::{
    Endpoint, info, join_addresses, read_color, run_hook, switch_proxy, wait_http_healthy,
    with_context,
};
use crate::swarm::{find, still_running, task_endpoint};
use runner_sdk::{Error, Outcome, kv, swarm};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(250);

fn previous_key(s: &Settings) -> String {
    format!("{}/rolling-previous", s.service)
}

pub(crate) fn deploy(s: &Settings) -> Result<Outcome, Error> {
    let image = s.image.clone().ok_or_else(|| {
        Error::InvalidConfig("missing setting `image`; pass --config image=NAME:TAG".into())
    })?;
    let (color, _) = read_color(s)?;
    let serving = if color.is_empty() {
        None
    } else {
        find(&s.container(&color))?
    };
    let Some(service) = serving else {
        info(&format!(
            "nothing of {} serves yet: the first deploy creates its service",
            s.service
        ));
        return crate::deploy::deploy(s);
    };
    if service.image == image {
        return Ok(runner_sdk::outcome(format!(
            "{} already runs {image}; nothing to update",
            service.name
        ))
        .with_output("color", color));
    }
    let outcome = roll(s, &color, &service, &image, true)?;
    kv::put(&previous_key(s), service.image.as_bytes())?;
    Ok(outcome)
}

pub(crate) fn rollback(s: &Settings) -> Result<Outcome, Error> {
    let (color, _) = read_color(s)?;
    let name = s.container(&color);
    let previous = kv::get(&previous_key(s))?
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .ok_or_else(|| {
            Error::NotFound(format!(
                "{} has no version to roll back to: no rolling update of it finished",
                s.service
            ))
        })?;
    let Some(service) = (!color.is_empty())
        .then(|| find(&name))
        .transpose()?
        .flatten()
    else {
        return Err(Error::NotFound(format!(
            "no Swarm service {name} serves {}",
            s.service
        )));
    };
    let outcome = roll(s, &color, &service, &previous, false)?;
    kv::put(&previous_key(s), service.image.as_bytes())?;
    Ok(outcome)
}

/// Update `service` to `image`, following it; on any failure, update it
/// back to the image it ran and fail with what happened.
fn roll(
    s: &Settings,
    color: &str,
    service: &swarm::Service,
    image: &str,
    test: bool,
) -> Result<Outcome, Error> {
    let started = Instant::now();
    let name = service.name.clone();
    let old = service.image.clone();
    info(&format!(
        "rolling {name} from {old} to {image}, {} tasks, start-first",
        service.replicas
    ));
    let mut vetted = HashSet::new();
    let mut serving = Vec::new();
    let before = last_word(service);
    let result = update(s, &name, image).and_then(|_| {
        let to = Target {
            image,
            old: &old,
            test,
            serve_old: true,
        };
        follow(s, &name, color, &to, &before, &mut vetted, &mut serving)
    });
    let result = result.and_then(|endpoints| {
        post_tests(s)?;
        Ok(endpoints)
    });
    match result {
        Ok(endpoints) => {
            swarm::register(&name, None)?;
            Ok(runner_sdk::outcome(format!(
                "{} now serves {image} from {name}, {} tasks, rolled ({} ms)",
                s.service,
                endpoints.len(),
                started.elapsed().as_millis()
            ))
            .with_output("color", color)
            .with_output("container", name)
            .with_output("addresses", join_addresses(&endpoints)))
        }
        Err(e) => {
            let report = crate::swarm::report(s, color);
            let before = swarm::inspect(&name)
                .map(|s| last_word(&s))
                .unwrap_or_default();
            let undone = update(s, &name, &old)
                .and_then(|_| {
                    // Back: the failed image's tasks serve only if they passed.
                    let to = Target {
                        image: &old,
                        old: image,
                        test: false,
                        serve_old: false,
                    };
                    follow(s, &name, color, &to, &before, &mut vetted, &mut serving)
                })
                .and_then(|_| swarm::register(&name, None).map(|_| ()));
            let fate = match undone {
                Ok(()) => format!("updated back to {old}, which serves"),
                Err(u) => format!(
                    "updating back to {old} failed too ({}): check `docker service ps {name}`",
                    runner_sdk::describe(&u)
                ),
            };
            Err(with_context(
                e,
                &format!("the rolling update of {name} to {image} failed; {fate}. {report}"),
            ))
        }
    }
}

/// The update state and message a service shows, before an update of ours:
/// until it changes it is the last update's, not ours.
fn last_word(service: &swarm::Service) -> (Option<String>, String) {
    (service.update_state.clone(), service.update_message.clone())
}

fn update(s: &Settings, name: &str, image: &str) -> Result<(), Error> {
    swarm::update(
        name,
        image,
        &s.env,
        swarm::UpdateConfig {
            parallelism: 1,
            start_first: true,
            monitor_ms: s.update_monitor.as_millis().min(u32::MAX as u128) as u32,
            delay_ms: s.update_delay.as_millis().min(u32::MAX as u128) as u32,
            rollback_on_failure: true,
        },
    )
}

fn post_tests(s: &Settings) -> Result<(), Error> {
    match (&s.proxy_url, &s.post_hook) {
        (Some(url), _) => run_hook(&s.post_hook, url).map(|_| ()),
        (None, Some(_)) => Err(Error::InvalidConfig(
            "post-integration tests need `proxy_url` (the service's address through the proxy), or post_hook=none".into(),
        )),
        (None, None) => Ok(()),
    }
}

/// Where an update goes.
struct Target<'a> {
    image: &'a str,
    /// The image it replaces.
    old: &'a str,
    /// Pre-test each new task (else health only).
    test: bool,
    /// The old image's running tasks serve until replaced (not when going
    /// back from a failed image).
    serve_old: bool,
}

/// Follow the update of `name` to `to.image` until every task runs it,
/// keeping the proxy on the running tasks of the old image and the new
/// ones that passed their checks (`vetted`). Fails when Swarm pauses or
/// rolls the update back (a state other than `before`, the last
/// update's), or at `update_timeout`.
fn follow(
    s: &Settings,
    name: &str,
    color: &str,
    to: &Target<'_>,
    before: &(Option<String>, String),
    vetted: &mut HashSet<String>,
    serving: &mut Vec<Endpoint>,
) -> Result<Vec<Endpoint>, Error> {
    let (image, test) = (to.image, to.test);
    let started = Instant::now();
    // Swarm moves to the next slot after the delay, whatever runner thinks
    // of this one: a new task must be healthy within half of it, so a
    // failing one is reverted while the next old task still serves.
    let window = s.update_delay / 2;
    loop {
        let service = swarm::inspect(name)?;
        let running: Vec<&swarm::Task> = service
            .tasks
            .iter()
            .filter(|t| t.state == "running" && t.desired_state == "running")
            .collect();
        for t in &running {
            if t.image != image || vetted.contains(&t.id) {
                continue;
            }
            let Some(at) = task_endpoint(s, t) else {
                continue;
            };
            let started = Instant::now();
            wait_http_healthy(s, name, &at, &|| {
                if started.elapsed() > window {
                    return Err(Error::Failed(format!(
                        "task {} of {name} ({image}) was not healthy within {window:?}, half the update delay",
                        t.id
                    )));
                }
                still_running(s, name, &at)
            })?;
            if test {
                run_hook(&s.pre_hook, &at.url())?;
            }
            vetted.insert(t.id.clone());
        }
        let serves: Vec<&&swarm::Task> = running
            .iter()
            .filter(|t| (to.serve_old && t.image == to.old) || vetted.contains(&t.id))
            .filter(|t| task_endpoint(s, t).is_some())
            .collect();
        let mut now: Vec<(u32, Endpoint)> = serves
            .iter()
            .filter_map(|t| task_endpoint(s, t).map(|e| (t.slot, e)))
            .collect();
        now.sort_by_key(|(slot, e)| (*slot, e.port));
        let now: Vec<Endpoint> = now.into_iter().map(|(_, e)| e).collect();
        if !now.is_empty() && now != *serving {
            // The catalog (which the upstream template reads) names exactly
            // the tasks that serve, then the proxy follows it.
            let ids: Vec<String> = serves.iter().map(|t| t.id.clone()).collect();
            swarm::register(name, Some(ids.as_slice()))?;
            switch_proxy(s, color, &now)?;
            *serving = now;
        }
        let all_new = running.len() as u32 == service.replicas
            && running
                .iter()
                .all(|t| t.image == image && vetted.contains(&t.id));
        let state = service.update_state.as_deref();
        // Going back, every task running the old image and none pending is
        // back: Swarm may say `updating` a while longer (seen after a stuck
        // update whose pending task it dropped), with nothing left to replace.
        let settled = !to.serve_old
            && service
                .tasks
                .iter()
                .all(|t| t.desired_state != "running" || t.state == "running");
        // Done when every task runs the image, whatever Swarm's last word
        // (updating back to the image Swarm already rolled back to changes nothing).
        if all_new && (settled || !matches!(state, Some("updating" | "rollback_started"))) {
            return Ok(serving.clone());
        }
        let ours = last_word(&service) != *before;
        match state {
            Some(
                state @ ("paused" | "rollback_started" | "rollback_paused" | "rollback_completed"),
            ) if ours => {
                return Err(Error::Failed(format!(
                    "Swarm stopped the update of {name} ({state}): {}",
                    service.update_message
                )));
            }
            _ => {}
        }
        if started.elapsed() > s.update_timeout {
            let pending: Vec<String> = service
                .tasks
                .iter()
                .filter(|t| t.desired_state == "running" && t.state != "running")
                .map(|t| format!("task slot {} {}: {}", t.slot, t.state, t.message))
                .collect();
            return Err(Error::Timeout(format!(
                "the update of {name} is stuck: still {} after {:?} ({})",
                service.update_state.as_deref().unwrap_or("updating"),
                s.update_timeout,
                if pending.is_empty() {
                    "no task pending".to_string()
                } else {
                    pending.join("; ")
                }
            )));
        }
        std::thread::sleep(POLL);
    }
}
