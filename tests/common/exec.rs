//! A `runner exec` invocation built up as cargo's test-support builds its
//! commands: the plugin, then the stage context, settings, grants and limits
//! by name, instead of argument lists spelled out in every test.
//!
//! ```ignore
//! env.exec(plugin("color"))
//!     .service("books-ms")
//!     .allow_kv("books-ms/")
//!     .config("commit", "true")
//!     .run()
//!     .success();
//! ```

use super::{Output, Runnable};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `runner exec`, run with [`Exec::run`] (output and exit status) or
/// started with [`Exec::spawn`] (a child to signal or wait for).
#[derive(Clone, Debug)]
pub struct Exec {
    cwd: PathBuf,
    /// Environment changes, in order: `Some` sets, `None` removes.
    envs: Vec<(OsString, Option<OsString>)>,
    args: Vec<OsString>,
    timeout: Duration,
}

impl Exec {
    /// `runner exec --plugin PLUGIN` in `cwd`, with its own state and cache
    /// dirs, no `RUST_LOG`, and a 120 s hard timeout (a broken deadline
    /// fails the test instead of hanging it).
    pub fn new(cwd: &Path, state: &Path, cache: &Path, plugin: impl AsRef<OsStr>) -> Self {
        let mut exec = Self {
            cwd: cwd.to_path_buf(),
            envs: Vec::new(),
            args: Vec::new(),
            timeout: Duration::from_secs(120),
        };
        exec.env("RUNNER_STATE_DIR", state)
            .env("RUNNER_CACHE_DIR", cache)
            // Registry plugins and credentials stay beside the cache.
            .env("RUNNER_PLUGIN_STORE", cache.with_extension("plugin-store"))
            .env("DOCKER_CONFIG", cache.with_extension("docker-config"))
            .env_remove("RUST_LOG")
            .arg("exec")
            .arg("--plugin")
            .arg(plugin);
        exec
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = dir.as_ref().to_path_buf();
        self
    }

    /// The hard timeout of [`Exec::run`] (not of a spawned child).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// `-f FILE`: the runner file with grants, proxies and limits.
    pub fn file(&mut self, file: impl AsRef<OsStr>) -> &mut Self {
        self.arg("-f").arg(file)
    }

    /// `--service NAME`.
    pub fn service(&mut self, name: &str) -> &mut Self {
        self.args(["--service", name])
    }

    /// `--config KEY=VALUE`.
    pub fn config(&mut self, key: &str, value: impl std::fmt::Display) -> &mut Self {
        self.arg("--config").arg(format!("{key}={value}"))
    }

    /// `--config KEY=VALUE` for each pair.
    pub fn configs<K, V>(&mut self, pairs: impl IntoIterator<Item = (K, V)>) -> &mut Self
    where
        K: AsRef<str>,
        V: std::fmt::Display,
    {
        for (key, value) in pairs {
            self.config(key.as_ref(), value);
        }
        self
    }

    /// `--input KEY=VALUE` (an earlier stage's output).
    pub fn input(&mut self, key: &str, value: &str) -> &mut Self {
        self.arg("--input").arg(format!("{key}={value}"))
    }

    /// `--allow-KIND VALUE`: a grant by its flag's name (`kv`, `http`, ...).
    pub fn allow(&mut self, kind: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.arg(format!("--allow-{kind}")).arg(value)
    }

    pub fn allow_kv(&mut self, prefix: &str) -> &mut Self {
        self.allow("kv", prefix)
    }

    pub fn allow_http(&mut self, origin: &str) -> &mut Self {
        self.allow("http", origin)
    }

    /// `--allow-dir HOST[:GUEST[:rw]]`.
    pub fn allow_dir(&mut self, grant: impl AsRef<OsStr>) -> &mut Self {
        self.allow("dir", grant)
    }

    pub fn allow_template_out(&mut self, dir: impl AsRef<OsStr>) -> &mut Self {
        self.allow("template-out", dir)
    }

    pub fn allow_service(&mut self, pattern: &str) -> &mut Self {
        self.allow("service", pattern)
    }

    pub fn allow_container(&mut self, pattern: &str) -> &mut Self {
        self.allow("container", pattern)
    }

    pub fn allow_image(&mut self, pattern: &str) -> &mut Self {
        self.allow("image", pattern)
    }

    pub fn allow_proxy(&mut self, name: &str) -> &mut Self {
        self.allow("proxy", name)
    }

    pub fn allow_build(&mut self) -> &mut Self {
        self.arg("--allow-build")
    }

    pub fn allow_push(&mut self) -> &mut Self {
        self.arg("--allow-push")
    }

    /// `--lock`: take the service's deploy lock.
    pub fn lock(&mut self) -> &mut Self {
        self.arg("--lock")
    }

    /// `--deadline DURATION` (humantime, `1s`).
    pub fn deadline(&mut self, deadline: &str) -> &mut Self {
        self.args(["--deadline", deadline])
    }

    /// `--memory SIZE` (`64MiB`).
    pub fn memory(&mut self, size: &str) -> &mut Self {
        self.args(["--memory", size])
    }

    /// The command `run` runs.
    pub fn command(&self) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("runner").expect("runner binary");
        cmd.current_dir(&self.cwd)
            .args(&self.args)
            .timeout(self.timeout);
        for (key, value) in &self.envs {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Run it to the end: its exit status and output.
    pub fn run(&mut self) -> Output {
        super::run(&mut self.command())
    }

    /// Start it with stdout and stderr piped; [`super::finish`] collects them.
    pub fn spawn(&self) -> std::process::Child {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("runner"));
        cmd.current_dir(&self.cwd)
            .args(&self.args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (key, value) in &self.envs {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.spawn().expect("starting runner")
    }
}

impl Runnable for Exec {
    fn run(&mut self) -> Output {
        Exec::run(self)
    }
}
