//! One isolated blue-green deployment for the end-to-end tests: its own
//! service name, images, nginx (or HAProxy) and state, removed on drop.

use super::{Env, Exec, Output, free_port, plugin, repo, run, unique};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One isolated deployment: its own service name, images, nginx and state.
pub struct Deployment {
    pub env: Env,
    /// The Consul test server when the Consul backend is under test.
    pub consul: Option<super::consul::ConsulServer>,
    pub work: PathBuf,
    pub port: u16,
    pub service: String,
    pub label: String,
    /// `nginx` (the files driver) or `haproxy` (the reload-free driver).
    pub proxy: String,
}

impl Deployment {
    pub fn start(name: &str, consul: bool) -> Self {
        Self::start_with_proxy(name, consul, "nginx")
    }

    /// A deployment whose traffic goes through `proxy` (`nginx` or `haproxy`).
    pub fn start_with_proxy(name: &str, consul: bool, proxy: &str) -> Self {
        let service = format!("{name}-{}", unique());
        let label = format!("runner-test={service}");
        let env = Env::new();
        let work = env.path().join("deploy");
        let port = free_port();
        let plugins = plugin("bluegreen").parent().unwrap().to_path_buf();
        let deployment = Self {
            env,
            consul: consul.then(|| super::consul::ConsulServer::start(None)),
            work,
            port,
            service,
            label,
            proxy: proxy.to_string(),
        };
        // Images first: the Drop below removes them whatever happens next.
        for (tag, version, broken) in [
            ("v1", "v1", ""),
            ("v2", "v2", ""),
            ("badhealth", "v3", "health"),
            ("badbooks", "v5", "books"),
            ("badpost", "v4", "proxied"),
            ("v3", "v3", ""),
            ("exits", "v6", "exit"),
        ] {
            deployment.build_image(tag, version, broken);
        }
        sh(Command::new(repo().join("examples/bluegreen/env"))
            .env("PROXY", proxy)
            .env("NGINX_PORT", free_port().to_string())
            .arg("up")
            .arg(&deployment.work)
            .arg(port.to_string())
            .arg(&plugins)
            .arg(&deployment.service));
        deployment
    }

    /// Image `SERVICE:tag` of the books service at `version`, `broken` as
    /// its BROKEN mode (`examples/books-service`), labelled as this
    /// deployment's so that Drop removes it.
    pub fn build_image(&self, tag: &str, version: &str, broken: &str) {
        sh(
            Command::new(repo().join("examples/books-service/build-image"))
                .args([&format!("{}:{tag}", self.service), version, broken])
                .env("IMAGE_LABELS", &self.label),
        );
    }

    pub fn runner(&self) -> assert_cmd::Command {
        let mut cmd = self.env.runner();
        cmd.current_dir(&self.work);
        if let Some(consul) = &self.consul {
            cmd.env("CONSUL_HTTP_ADDR", consul.url());
        }
        cmd
    }

    /// `runner exec` of the blue-green stage (the working copy's plugin and
    /// runner file) for `service` behind this deployment's proxy, its
    /// containers labelled as this deployment's: the settings every deploy
    /// here shares. The caller adds the proxy URL, template and drain.
    pub fn stage(&self, service: &str) -> Exec {
        let mut exec = self.env.exec("plugins/bluegreen.wasm");
        exec.current_dir(&self.work)
            .file("runner.toml")
            .service(service)
            .config("restart", "no")
            .config("stop_timeout", "5s")
            .arg("-c")
            .arg(format!("label.{}", self.label));
        if let Some(consul) = &self.consul {
            exec.env("CONSUL_HTTP_ADDR", consul.url());
        }
        if self.proxy == "haproxy" {
            exec.allow_proxy("haproxy").config("proxy", "haproxy");
        }
        exec
    }

    /// `runner exec` of the blue-green stage of this deployment's service,
    /// with `args` (`-c image=...`, `-c action=rollback`, ...).
    pub fn bluegreen(&self, args: &[&str]) -> Output {
        self.bluegreen_with(args, &[])
    }

    /// As `bluegreen`, with extra environment variables (crash points).
    pub fn bluegreen_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut exec = self.stage(&self.service);
        exec.config("proxy_url", format!("http://127.0.0.1:{}", self.port))
            .config(
                "upstream_template",
                "templates/nginx-upstreams-{color}.ctmpl",
            )
            .config("drain", "1s");
        for (k, v) in envs {
            exec.env(k, v);
        }
        exec.args(args).run()
    }

    /// `bluegreen(args)` under a bounded load through the proxy (at least
    /// `min` requests, each on a new connection): it must exit with `code`
    /// and no request may fail.
    pub fn bluegreen_under_load(&self, args: &[&str], min: usize, code: i32) -> Output {
        self.wait_serving(&self.serving());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (out, (sent, failures, _)) = std::thread::scope(|scope| {
            let load = scope.spawn(|| load(self.port, &stop, min, 50_000));
            let out = self.bluegreen(args);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            (out, load.join().unwrap())
        });
        let out = out.expect_code(code);
        assert!(
            failures.is_empty(),
            "{} of {sent} requests failed: {:?}\n{}\nnginx error log:\n{}",
            failures.len(),
            &failures[..failures.len().min(5)],
            out.stderr,
            self.proxy_errors()
        );
        out
    }

    /// The last lines of nginx's error log (why a request failed: which
    /// upstream refused or reset), for a failed assertion's message.
    pub fn proxy_errors(&self) -> String {
        let log =
            std::fs::read_to_string(self.work.join("nginx/logs/error.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn deploy(&self, tag: &str) -> Output {
        self.bluegreen(&[
            "-c",
            &format!("image={}:{tag}", self.service),
            "-c",
            "health_timeout=5s",
        ])
    }

    /// The version the proxy serves, from the books endpoint.
    pub fn serving(&self) -> String {
        let url = format!("http://127.0.0.1:{}/api/v1/books", self.port);
        let body = sh(Command::new("curl").args(["-s", "--max-time", "5", &url]));
        let doc: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        doc["version"].as_str().unwrap_or_default().to_string()
    }

    /// Wait (bounded) until 20 requests in a row get `version`.
    pub fn wait_serving(&self, version: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut streak = 0;
        while streak < 20 {
            assert!(
                Instant::now() < deadline,
                "the proxy never settled on {version}"
            );
            streak = if self.serving() == version {
                streak + 1
            } else {
                0
            };
        }
    }

    pub fn color(&self) -> String {
        run(self
            .runner()
            .args(["kv", "get", &format!("{}/color", self.service)]))
        .stdout
        .trim()
        .to_string()
    }

    /// (name, running) of this deployment's containers.
    pub fn containers(&self) -> Vec<(String, bool)> {
        let out = sh(Command::new("docker").args([
            "ps",
            "-a",
            "--filter",
            &format!("label={}", self.label),
            "--format",
            "{{.Names}} {{.State}}",
        ]));
        let mut list: Vec<(String, bool)> = out
            .lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(n, s)| (n.to_string(), s == "running"))
            })
            .collect();
        list.sort();
        list
    }

    /// Names of this deployment's running containers.
    pub fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|(_, running)| *running)
            .map(|(name, _)| name)
            .collect()
    }

    pub fn catalog(&self) -> Vec<String> {
        run(self.runner().args(["catalog", "list"]))
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split('\t').next().map(str::to_string))
            .filter(|s| s.starts_with(&self.service))
            .collect()
    }

    /// `runner status` of the service (registry and engine; no pipeline file).
    pub fn status(&self) -> String {
        run(self
            .runner()
            .args(["status", &self.service, "-f", "no-such-pipeline.toml"]))
        .expect_code(0)
        .stdout
    }

    /// The upstream file nginx reads for this service.
    pub fn upstream_file(&self) -> String {
        std::fs::read_to_string(
            self.work
                .join(format!("nginx/upstreams/{}.conf", self.service)),
        )
        .unwrap_or_default()
    }

    pub fn name(&self, color: &str) -> String {
        format!("{}-{color}", self.service)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("examples/bluegreen/env"))
            .arg("down")
            .arg(&self.work)
            .status();
        let filter = format!("label={}", self.label);
        super::docker_remove(&filter, &filter);
    }
}

/// Requests through nginx until `stop` is set and at least `min` were sent
/// (bounded by `max` and a deadline), each on a new connection, at most one
/// per [`LOAD_PACE`]; returns (sent, failed, versions seen). A failure
/// reads `+MS: what` (ms since the load began) with the error's whole chain.
pub fn load(
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    min: usize,
    max: usize,
) -> (usize, Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/api/v1/books");
        let began = Instant::now();
        let deadline = began + Duration::from_secs(120);
        let (mut sent, mut failures, mut versions) = (0, Vec::new(), Vec::<String>::new());
        let mut pace = tokio::time::interval(LOAD_PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while sent < max
            && Instant::now() < deadline
            && (sent < min || !stop.load(std::sync::atomic::Ordering::SeqCst))
        {
            pace.tick().await;
            sent += 1;
            let at = began.elapsed().as_millis();
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => {
                    let version = r
                        .headers()
                        .get("x-version")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if !versions.contains(&version) {
                        versions.push(version);
                    }
                }
                Ok(r) => failures.push(format!("+{at}: status {}", r.status())),
                Err(e) => failures.push(format!("+{at}: {}", runner::error_chain::error_chain(&e))),
            }
        }
        (sent, failures, versions)
    })
}

/// The least time between two requests of [`load`]: a new connection per
/// request, unpaced, opened ~1,000 a second here, and a phase of a minute
/// left tens of thousands of sockets in TIME_WAIT (a rare "error sending
/// request"). 2 ms still probes a switch every 2 ms.
pub const LOAD_PACE: Duration = Duration::from_millis(2);

/// Requests through the proxy on ONE keep-alive connection at a time, as a
/// browser or a connection-pooling client sends them, with no retry: a
/// request the proxy's end of the connection drops is a failure (then a new
/// connection). Runs until `stop` is set and at least `min` were sent
/// (bounded by `max` and a deadline); returns (sent, failed, versions seen).
pub fn keepalive_load(
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    min: usize,
    max: usize,
) -> (usize, Vec<String>, Vec<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut sent, mut failures, mut versions) = (0, Vec::new(), Vec::<String>::new());
    let mut conn: Option<BufReader<std::net::TcpStream>> = None;
    let request = format!(
        "GET /api/v1/books HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n\r\n"
    );
    while sent < max
        && Instant::now() < deadline
        && (sent < min || !stop.load(std::sync::atomic::Ordering::SeqCst))
    {
        sent += 1;
        let attempt = (|| -> std::io::Result<(u16, String)> {
            if conn.is_none() {
                let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                conn = Some(BufReader::new(stream));
            }
            let reader = conn.as_mut().expect("connected above");
            reader.get_mut().write_all(request.as_bytes())?;
            let mut status_line = String::new();
            if reader.read_line(&mut status_line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            let status: u16 = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let (mut length, mut version, mut close) = (None, String::new(), false);
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = v.trim().parse::<usize>().ok(),
                        "x-version" => version = v.trim().to_string(),
                        "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length.unwrap_or(0)];
            reader.read_exact(&mut body)?;
            if close {
                conn = None;
            }
            Ok((status, version))
        })();
        match attempt {
            Ok((200, version)) => {
                if !versions.contains(&version) {
                    versions.push(version);
                }
            }
            Ok((status, _)) => failures.push(format!("status {status}")),
            Err(e) => {
                conn = None;
                failures.push(e.to_string());
            }
        }
    }
    (sent, failures, versions)
}
