//! Shared helpers for the end-to-end tests: the built plugins, a runner
//! command with its own state and cache, builders for a runner file and an
//! `exec` call, names and ports unique in this process, the Docker gate,
//! and a local HTTP server.
#![allow(dead_code)]

pub mod consul;
pub mod deployment;
pub mod docker;
pub mod engines;
pub mod exec;
pub mod hostile;
pub mod oci_registry;
mod paths;
pub mod runner_file;

pub(crate) use docker::require_docker;
pub use exec::Exec;
pub use paths::{plugin, repo, target_dir};
pub use runner_file::{RunnerFile, Stage, Table};

use assert_cmd::Command;
use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (for a server a test starts), never one
/// handed out before in this process: the areas' tests run side by side in
/// one binary, and a port freed here may be bound only later.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1")
            .local_addr()
            .expect("local addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A name unique to this test process and call, lowercase alphanumeric:
/// for services, containers and images, which outlive a test's temp dir
/// and are shared with every test running beside it.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos % 0xffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Remove every container matching `docker ps --filter CONTAINERS`, then
/// every image matching `docker images --filter IMAGES`: what a test made,
/// whatever state it left them in. Best effort: cleanup never fails a test.
pub fn docker_remove(containers: &str, images: &str) {
    for (list, filter, remove) in [
        (["ps", "-aq"], containers, ["rm", "-f"]),
        (["images", "-q"], images, ["rmi", "-f"]),
    ] {
        let ids = std::process::Command::new("docker")
            .args(list)
            .args(["--filter", filter])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut ids: Vec<&str> = ids.split_whitespace().collect();
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(remove)
                .args(&ids)
                .output();
        }
    }
}

/// A build context for an image that only sleeps: the host's `sleep` and
/// the libraries it loads, `FROM scratch` (nothing is pulled). Everything
/// built from it carries `label` (`KEY=VALUE`).
pub fn sleep_context(dir: &Path, label: &str) {
    let sleep = PathBuf::from("/usr/bin/sleep");
    let ldd = std::process::Command::new("ldd")
        .arg(&sleep)
        .output()
        .expect("ldd");
    let mut files = vec![sleep.clone()];
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    // The label is in the Dockerfile, so whatever runner builds from this
    // context (tagged or not) is cleaned up with the rest.
    let mut dockerfile = format!("FROM scratch\nLABEL {label}\n");
    for (i, f) in files.iter().enumerate() {
        let name = format!("f{i}");
        std::fs::copy(f, dir.join(&name)).unwrap();
        dockerfile.push_str(&format!("COPY {name} {}\n", f.display()));
    }
    dockerfile.push_str(&format!(
        "CMD [\"{}\", \"3600\"]\nSTOPSIGNAL SIGKILL\n",
        sleep.display()
    ));
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
}

/// A scratch directory with its own state dir and artifact cache.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// Where this env's registry plugins are stored (as `exec` sets it too).
    pub fn plugin_store(&self) -> PathBuf {
        self.cache_dir().with_extension("plugin-store")
    }

    /// `runner` with this env's state and cache, a hard timeout so a broken
    /// deadline fails the test instead of hanging it, and no colour.
    pub fn runner(&self) -> Command {
        let mut cmd = Command::cargo_bin("runner").expect("runner binary");
        cmd.current_dir(self.dir.path())
            .env("RUNNER_STATE_DIR", self.state_dir())
            .env("RUNNER_CACHE_DIR", self.cache_dir())
            // Registry plugins and credentials stay in the test's directory.
            .env("RUNNER_PLUGIN_STORE", self.plugin_store())
            .env(
                "DOCKER_CONFIG",
                self.cache_dir().with_extension("docker-config"),
            )
            .env_remove("RUNNER_REGISTRY_USERNAME")
            .env_remove("RUNNER_REGISTRY_PASSWORD")
            .env_remove("RUNNER_PLUGIN_PATH")
            .env_remove("RUNNER_TRUST_KEYS")
            .env_remove("RUNNER_REQUIRE_SIGNATURE")
            .env_remove("COSIGN_PASSWORD")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("RUST_LOG")
            .timeout(Duration::from_secs(120));
        cmd
    }

    /// The precompiled artifacts in this env's cache.
    pub fn artifacts(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.cache_dir())
            .map(|d| {
                d.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `runner exec --plugin PLUGIN` with this env's state and cache.
    pub fn exec(&self, plugin: impl AsRef<OsStr>) -> Exec {
        Exec::new(self.path(), &self.state_dir(), &self.cache_dir(), plugin)
    }

    /// `runner exec --plugin <probe> --config mode=MODE`.
    pub fn probe(&self, mode: &str) -> Exec {
        let mut exec = self.exec(plugin("sandbox-probe"));
        exec.config("mode", mode);
        exec
    }
}

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A command that runs to the end: a `runner` command or an [`Exec`].
pub trait Runnable {
    fn run(&mut self) -> Output;
}

impl Runnable for Command {
    fn run(&mut self) -> Output {
        Output::from(self.output().expect("running runner"))
    }
}

/// Run `cmd` to the end: its exit status and output.
pub fn run(cmd: &mut impl Runnable) -> Output {
    cmd.run()
}

/// Wait for a spawned runner (see [`Exec::spawn`]): its exit status and output.
pub fn finish(child: std::process::Child) -> Output {
    Output::from(child.wait_with_output().expect("waiting for runner"))
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            signal: std::os::unix::process::ExitStatusExt::signal(&out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Output {
    /// Assert the exit code, showing everything on mismatch.
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Assert exit code 0.
    pub fn success(self) -> Self {
        self.expect_code(0)
    }

    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }

    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    pub fn output(&self, key: &str) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }
}

/// A local HTTP server on 127.0.0.1 answering with `handler`, on its own thread.
pub struct HttpServer {
    pub port: u16,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub type Reply = (u16, Vec<(String, String)>, String);

impl HttpServer {
    pub fn start(handler: impl Fn(&str, &str) -> Reply + Send + 'static) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server.server_addr().to_ip().expect("ip addr").port();
        let srv = server.clone();
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let (status, headers, body) = handler(request.method().as_str(), request.url());
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                for (k, v) in headers {
                    response.add_header(
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header"),
                    );
                }
                let _ = request.respond(response);
            }
        });
        Self {
            port,
            server,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
