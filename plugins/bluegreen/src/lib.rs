//! The blue-green stage: the seed's flow (seed 001), as a sandboxed plugin.
//!
//! deploy: read `<service>/color` → run `<service>-<next>` beside the old
//! color → wait for its health path → pre-integration hook against its own
//! address → render the proxy upstream for it and reload → write the color
//! (CAS) → post-integration hook through the proxy → after the drain delay,
//! stop (not remove) the old color, so a rollback is instant.
//!
//! - pre-integration failure: stop the new color; proxy and color untouched.
//! - post-integration failure: proxy back to the old color, color restored,
//!   new color stopped.
//!
//! rollback (`action=rollback`): start the stopped previous color, wait for
//! its health, switch the proxy to it, restore the color, stop the current.
//! While a candidate waits for promotion, rollback stops it instead.
//!
//! promotion (`promotion=manual`, Argo's `autoPromotionEnabled: false`): the
//! deploy stops after the pre-integration tests with output `paused`, the
//! new color running but not serving; `action=promote` then switches to it
//! (post-integration tests, drain, old color stopped).
//!
//! Config: `image` (required for deploy), `container_port` (8080),
//! `health_path` (/health), `health_timeout` (60s), `env.NAME=VALUE`,
//! `label.KEY=VALUE` (container labels),
//! `stop_timeout` (10s), `drain` (2s), `restart` (unless-stopped), `proxy`
//! (nginx), `upstream_file` (`<service>.conf` in the proxy's config dir),
//! `upstream_template` (a template file; `{color}` in the path is replaced;
//! default: the seed's upstream template), `proxy_url` (base URL through the
//! proxy, for the post hook), `pre_hook` / `post_hook` (hook names, default
//! `pre-integration` / `post-integration`; `none` skips), `logs_tail` (20).
//!
//! Grants: `--allow-kv <service>/`, `--allow-service '<service>-*'`,
//! `--allow-container '<service>-*'`, `--allow-image ...`, `--allow-http
//! 'http://127.0.0.1:*'`, `--allow-proxy NAME`, `--allow-hook NAME`.

use runner_sdk::{
    Config, Context, Error, Guest, Outcome, config, docker, hooks, http, kv, proxy, template,
};
use std::time::{Duration, Instant};

struct BlueGreen;

const COLORS: [&str; 2] = ["blue", "green"];

fn other(color: &str) -> &'static str {
    if color == "blue" { "green" } else { "blue" }
}

struct Settings {
    service: String,
    image: Option<String>,
    container_port: u16,
    health_path: String,
    health_timeout: Duration,
    env: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    stop_timeout: u32,
    drain: Duration,
    restart: docker::RestartPolicy,
    proxy: String,
    upstream_file: Option<String>,
    upstream_template: Option<String>,
    proxy_url: Option<String>,
    pre_hook: Option<String>,
    post_hook: Option<String>,
    logs_tail: u32,
    /// `promotion=manual`: stop after the pre-integration tests until promoted.
    manual_promotion: bool,
}

fn hook_setting(cfg: &Config<'_>, key: &str, default: &str) -> Option<String> {
    match cfg.get_or(key, default) {
        "" | "none" => None,
        name => Some(name.to_string()),
    }
}

impl Settings {
    fn from(ctx: &Context) -> Result<Self, Error> {
        let cfg = config(ctx);
        if ctx.service.is_empty() {
            return Err(Error::InvalidConfig(
                "no service given; pass --service NAME".into(),
            ));
        }
        let restart = match cfg.get_or("restart", "unless-stopped") {
            "no" => docker::RestartPolicy::No,
            "on-failure" => docker::RestartPolicy::OnFailure,
            "unless-stopped" => docker::RestartPolicy::UnlessStopped,
            "always" => docker::RestartPolicy::Always,
            other => {
                return Err(Error::InvalidConfig(format!(
                    "setting `restart` must be no, on-failure, unless-stopped or always, got \"{other}\""
                )));
            }
        };
        let port = cfg.u64("container_port", 8080)?;
        Ok(Settings {
            service: ctx.service.clone(),
            image: cfg.get("image").map(str::to_string),
            container_port: u16::try_from(port).map_err(|_| {
                Error::InvalidConfig(format!("setting `container_port` {port} is not a port"))
            })?,
            health_path: cfg.get_or("health_path", "/health").to_string(),
            health_timeout: cfg.duration("health_timeout", Duration::from_secs(60))?,
            env: cfg
                .with_prefix("env")
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: cfg
                .with_prefix("label")
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stop_timeout: cfg
                .duration("stop_timeout", Duration::from_secs(10))?
                .as_secs() as u32,
            drain: cfg.duration("drain", Duration::from_secs(2))?,
            restart,
            proxy: cfg.get_or("proxy", "nginx").to_string(),
            upstream_file: cfg.get("upstream_file").map(str::to_string),
            upstream_template: cfg.get("upstream_template").map(str::to_string),
            proxy_url: cfg.get("proxy_url").map(str::to_string),
            pre_hook: hook_setting(&cfg, "pre_hook", "pre-integration"),
            post_hook: hook_setting(&cfg, "post_hook", "post-integration"),
            logs_tail: cfg.u64("logs_tail", 20)? as u32,
            manual_promotion: match cfg.get_or("promotion", "auto") {
                "auto" => false,
                "manual" => true,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "setting `promotion` must be auto or manual, got \"{other}\""
                    )));
                }
            },
        })
    }

    fn container(&self, color: &str) -> String {
        format!("{}-{color}", self.service)
    }

    fn color_key(&self) -> String {
        format!("{}/color", self.service)
    }

    /// The color waiting for promotion, while one does.
    fn promotion_key(&self) -> String {
        format!("{}/promotion", self.service)
    }
}

fn info(message: &str) {
    runner_sdk::info(message);
}

/// The stored color and its modify index (0 when never deployed).
fn read_color(s: &Settings) -> Result<(String, u64), Error> {
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
fn write_color(s: &Settings, color: &str, expected: u64) -> Result<u64, Error> {
    if !kv::cas(&s.color_key(), color.as_bytes(), expected)? {
        return Err(Error::Conflict(format!(
            "{} changed during the deploy (another deploy running?); nothing was switched back automatically beyond this stage's own changes",
            s.color_key()
        )));
    }
    Ok(kv::get(&s.color_key())?
        .map(|e| e.modify_index)
        .unwrap_or(0))
}

fn host_port(s: &Settings, c: &docker::Container) -> Result<u16, Error> {
    c.ports
        .iter()
        .find(|p| p.container_port == s.container_port)
        .map(|p| p.host_port)
        .ok_or_else(|| {
            Error::Failed(format!(
                "container {} publishes no port {}",
                c.name, s.container_port
            ))
        })
}

fn logs(s: &Settings, name: &str) -> String {
    match docker::logs(name, s.logs_tail) {
        Ok(text) if text.trim().is_empty() => "(no log output)".into(),
        Ok(text) => text.trim_end().to_string(),
        Err(e) => format!("(logs unavailable: {})", runner_sdk::describe(&e)),
    }
}

/// Poll the health path until it answers 200; fail early if the container exits.
fn wait_healthy(s: &Settings, name: &str, port: u16) -> Result<Duration, Error> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}{}", s.health_path);
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
        let c = docker::inspect(name)?;
        if !c.running {
            return Err(Error::Failed(format!(
                "{name} exited (code {}) before answering {url}",
                c.exit_code.unwrap_or(-1)
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Failed(format!(
        "{name} did not answer {url} with 200 within {:?} (last: {last})",
        s.health_timeout
    )))
}

fn upstream_destination(s: &Settings) -> Result<String, Error> {
    let dir = proxy::config_dir(&s.proxy)?;
    let file = s
        .upstream_file
        .clone()
        .unwrap_or_else(|| format!("{}.conf", s.service));
    Ok(format!("{}/{file}", dir.trim_end_matches('/')))
}

/// The upstream for `color`: the configured template file, or the seed's.
fn upstream_source(s: &Settings, color: &str) -> template::Source {
    match &s.upstream_template {
        Some(path) => template::Source::File(path.replace("{color}", color)),
        None => template::Source::Inline(format!(
            "upstream {service} {{\n {{{{range service \"{service}-{color}\" \"any\"}}}}\n server {{{{.Address}}}}:{{{{.Port}}}};\n {{{{end}}}}\n}}\n",
            service = s.service
        )),
    }
}

/// Point the proxy at `color` and reload it (only when the config changed).
fn switch_proxy(s: &Settings, color: &str) -> Result<bool, Error> {
    let rendered = template::render(&upstream_source(s, color), &upstream_destination(s)?)?;
    if rendered.changed {
        proxy::reload(&s.proxy)?;
        info(&format!(
            "proxy {} now sends {} to {color}",
            s.proxy, s.service
        ));
    }
    Ok(rendered.changed)
}

fn run_hook(name: &Option<String>, base_url: &str) -> Result<Option<String>, Error> {
    let Some(hook) = name else { return Ok(None) };
    info(&format!("running hook {hook} against {base_url}"));
    let outcome = hooks::run(hook, &[("base_url".to_string(), base_url.to_string())])?;
    Ok(Some(outcome.message))
}

/// Stop a container, logging rather than failing: used while undoing.
fn stop_quietly(s: &Settings, name: &str) {
    if let Err(e) = docker::stop(name, s.stop_timeout) {
        runner_sdk::warn(&format!(
            "could not stop {name}: {}",
            runner_sdk::describe(&e)
        ));
    }
}

fn deploy(s: &Settings) -> Result<Outcome, Error> {
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

    // A previous deploy left this color stopped: it is replaced.
    match docker::remove(&name, true) {
        Ok(()) | Err(Error::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    let container = docker::run(&docker::RunSpec {
        name: name.clone(),
        image: image.clone(),
        env: s.env.clone(),
        labels: [("bluegreen.color".to_string(), next.to_string())]
            .into_iter()
            .chain(s.labels.clone())
            .collect(),
        command: None,
        ports: vec![s.container_port],
        restart: s.restart,
        service: Some(name.clone()),
        tags: vec![image.clone()],
    })?;
    let port = host_port(s, &container)?;
    let t_start = started.elapsed();

    let healthy = wait_healthy(s, &name, port);
    let t_healthy = started.elapsed();
    let pre = healthy.and_then(|_| run_hook(&s.pre_hook, &format!("http://127.0.0.1:{port}")));
    if let Err(e) = pre {
        stop_quietly(s, &name);
        let logs = logs(s, &name);
        return Err(with_context(
            e,
            &format!(
                "{name} failed before the switch; proxy and color untouched, {name} stopped. Last log lines of {name}:\n{logs}"
            ),
        ));
    }
    let t_tested = started.elapsed();

    let candidate = Candidate {
        current,
        index,
        next,
        name,
        port,
        image,
    };
    if s.manual_promotion {
        kv::put(&s.promotion_key(), next.as_bytes())?;
        info(&format!(
            "{} passed its pre-integration tests and waits for promotion; {} keeps serving",
            candidate.name,
            if candidate.current.is_empty() {
                "nothing"
            } else {
                &candidate.current
            }
        ));
        return Ok(runner_sdk::outcome(format!(
            "{} runs {} and waits for promotion (runner promote {})",
            candidate.name, candidate.image, s.service
        ))
        .with_output("paused", format!("{} awaits promotion", candidate.name))
        .with_output("color", candidate.current.clone())
        .with_output("candidate", next)
        .with_output("container", candidate.name.clone())
        .with_output("port", port.to_string()));
    }
    switch_to(s, candidate, started, [t_start, t_healthy, t_tested])
}

/// A new color that passed its pre-integration tests, not yet serving.
struct Candidate {
    current: String,
    index: u64,
    next: &'static str,
    name: String,
    port: u16,
    image: String,
}

/// Switch the proxy to the candidate, record the color, run the
/// post-integration tests through the proxy (undoing everything if they
/// fail), then stop the old color after the drain.
fn switch_to(
    s: &Settings,
    candidate: Candidate,
    started: Instant,
    before: [Duration; 3],
) -> Result<Outcome, Error> {
    let Candidate {
        current,
        index,
        next,
        name,
        port,
        image,
    } = candidate;
    let [t_start, t_healthy, t_tested] = before;
    if let Err(e) = switch_proxy(s, next) {
        stop_quietly(s, &name);
        if !current.is_empty() {
            let _ = switch_proxy(s, &current);
        }
        return Err(with_context(
            e,
            &format!("switching the proxy to {name} failed; {name} stopped"),
        ));
    }
    let t_switched = started.elapsed();
    let new_index = match write_color(s, next, index) {
        Ok(i) => i,
        Err(e) => {
            if !current.is_empty() {
                let _ = switch_proxy(s, &current);
            }
            stop_quietly(s, &name);
            return Err(e);
        }
    };

    let post = match &s.proxy_url {
        Some(url) => run_hook(&s.post_hook, url),
        None if s.post_hook.is_some() => Err(Error::InvalidConfig(
            "post-integration tests need `proxy_url` (the service's address through the proxy), or post_hook=none".into(),
        )),
        None => Ok(None),
    };
    if let Err(e) = post {
        // Back to how it was: proxy, color, and the new color stopped.
        let mut undo = Vec::new();
        if let Some(Err(u)) = (!current.is_empty()).then(|| switch_proxy(s, &current)) {
            undo.push(format!("proxy: {}", runner_sdk::describe(&u)));
        }
        let restored = if current.is_empty() {
            kv::delete(&s.color_key()).map(|_| ())
        } else {
            kv::cas(&s.color_key(), current.as_bytes(), new_index).map(|_| ())
        };
        if let Err(u) = restored {
            undo.push(format!("color: {}", runner_sdk::describe(&u)));
        }
        stop_quietly(s, &name);
        let undo = if undo.is_empty() {
            String::new()
        } else {
            format!(" (undo problems: {})", undo.join("; "))
        };
        return Err(with_context(
            e,
            &format!(
                "{name} failed after the switch; switched back to {}, color restored, {name} stopped{undo}",
                if current.is_empty() {
                    "nothing (first deploy)"
                } else {
                    &current
                }
            ),
        ));
    }
    let t_post = started.elapsed();

    if !current.is_empty() {
        std::thread::sleep(s.drain);
        stop_quietly(s, &s.container(&current));
        info(&format!(
            "stopped {} (kept for rollback)",
            s.container(&current)
        ));
    }
    // Parts a promotion did not run (start, health, pre-tests) are left out.
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
    Ok(runner_sdk::outcome(format!(
        "{} now serves {image} from {name} ({timings})",
        s.service
    ))
    .with_output("color", next)
    .with_output("previous", current)
    .with_output("container", name)
    .with_output("port", port.to_string())
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
    ))
}

/// `action=promote`: the candidate a manual-promotion deploy left running.
fn promote(s: &Settings) -> Result<Outcome, Error> {
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
    let name = s.container(next);
    let container = docker::inspect(&name)?;
    if !container.running {
        return Err(Error::Failed(format!(
            "{name} is no longer running ({}); deploy again",
            container.state
        )));
    }
    let port = host_port(s, &container)?;
    let image = container.image.clone();
    let outcome = switch_to(
        s,
        Candidate {
            current,
            index,
            next,
            name,
            port,
            image,
        },
        started,
        [Duration::ZERO; 3],
    );
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

/// `action=rollback` while a candidate waits for promotion: stop it.
fn abort_promotion(s: &Settings, next: &str) -> Result<Outcome, Error> {
    let name = s.container(next);
    stop_quietly(s, &name);
    kv::delete(&s.promotion_key())?;
    let (current, _) = read_color(s)?;
    Ok(runner_sdk::outcome(format!(
        "{name} will not be promoted: stopped; {} keeps serving",
        if current.is_empty() {
            "nothing"
        } else {
            &current
        }
    ))
    .with_output("color", current))
}

fn rollback(s: &Settings) -> Result<Outcome, Error> {
    if let Some(pending) = kv::get(&s.promotion_key())? {
        return abort_promotion(s, &String::from_utf8_lossy(&pending.value));
    }
    let (current, index) = read_color(s)?;
    if current.is_empty() {
        return Err(Error::NotFound(format!(
            "{} was never deployed: nothing to roll back to",
            s.service
        )));
    }
    let previous = other(&current);
    let name = s.container(previous);
    let container = docker::start(&name).map_err(|e| match e {
        Error::NotFound(m) => Error::NotFound(format!("no stopped {name} to roll back to ({m})")),
        e => e,
    })?;
    let port = host_port(s, &container)?;
    if let Err(e) = wait_healthy(s, &name, port) {
        stop_quietly(s, &name);
        let logs = logs(s, &name);
        return Err(with_context(
            e,
            &format!(
                "{name} did not come back healthy; nothing switched. Last log lines of {name}:\n{logs}"
            ),
        ));
    }
    switch_proxy(s, previous)?;
    write_color(s, previous, index)?;
    std::thread::sleep(s.drain);
    stop_quietly(s, &s.container(&current));
    Ok(
        runner_sdk::outcome(format!("{} rolled back to {previous} ({name})", s.service))
            .with_output("color", previous)
            .with_output("previous", current),
    )
}

/// Keep the error's kind, add what this stage did about it.
fn with_context(e: Error, context: &str) -> Error {
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

impl Guest for BlueGreen {
    fn run(ctx: Context) -> Result<Outcome, Error> {
        let settings = Settings::from(&ctx)?;
        match config(&ctx).get_or("action", "deploy") {
            "deploy" => deploy(&settings),
            "rollback" => rollback(&settings),
            "promote" => promote(&settings),
            other => Err(Error::InvalidConfig(format!(
                "setting `action` must be deploy, promote or rollback, got \"{other}\""
            ))),
        }
    }
}

runner_sdk::export!(BlueGreen);
