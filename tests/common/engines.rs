//! Extra Docker engines beside the main one, and a real multi-node Swarm of
//! them, for multi-host and Swarm tests (the recipe of
//! `shared/reference/private-engines.md`).
//!
//! The main engine is never touched: each [`PrivateEngine`] is a `dockerd`
//! the test starts with its own data and exec roots, pidfile and unix
//! socket, an empty `--config-file` (the machine's daemon.json would
//! conflict), `--storage-driver vfs`, `--iptables=false` and a bridge the
//! test creates with a small subnet of its own (never `--bridge none`,
//! which deletes `docker0`). Images reach it by `docker save | docker
//! load`. Published ports are reached on 127.0.0.1 only, each engine's
//! dynamic ones from a range of its own (see [`port_range`]). Dropping the
//! engine leaves any Swarm, stops the daemon by its pid, deletes its bridge
//! (and `docker_gwbridge` if the main engine has none) and its data, and
//! checks that `docker0` is still there.
//!
//! ```ignore
//! let (a, b) = (PrivateEngine::start(), PrivateEngine::start());
//! a.load_image("runner-test-svc:1");
//! let swarm = Swarm::init(&a, &[&b]);
//! ```
//!
//! [`PrivateEngine::start_tls`] also listens on `tcp://127.0.0.1:PORT` with
//! `--tlsverify`, its certificates made by the openssl CLI from a CA of the
//! test's own ([`test_ca`], [`issue`]).
//!
//! Needs root (bridges) and `dockerd`; [`require_engines!`] skips a test
//! without them, and fails it under CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Subnet slots `172.(28+slot).0.0/24`: a few engines at a time, never the
/// main engine's `172.17/16`. A slot is free again when its engine is dropped.
const SLOTS: usize = 4;
static USED: Mutex<[bool; SLOTS]> = Mutex::new([false; SLOTS]);

/// How long an engine may take to answer after start, and to stop.
const START_WITHIN: Duration = Duration::from_secs(60);
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// The dynamic host ports of slot `slot`'s engine: above the kernel's
/// ephemeral range (32768-60999), a block per slot. Every engine here shares
/// one network namespace, and each allocates "free" ports from its own
/// bookkeeping of `ip_local_port_range`: two engines (or the main one) walked
/// the same ports, and a Swarm task whose ten tries all met another engine's
/// ports failed to start (`bind: address already in use`), which a rolling
/// update takes for a failed task. On real nodes each engine has the host's
/// ports to itself, as here each has its own block.
pub fn port_range(slot: usize) -> (u16, u16) {
    let start = 61_000 + 1_100 * slot as u16;
    (start, start + 1_099)
}

/// Whether extra engines can be started here: root, `dockerd`, `ip`,
/// `unshare` (util-linux).
pub fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    root && has("dockerd") && has("ip") && has("unshare") && super::docker::available()
}

/// True when the test may go on; skips (with a message) without root or
/// dockerd, fails under CI. Use through [`require_engines!`].
pub fn require() -> bool {
    available() || super::docker::skip("extra Docker engines need root, dockerd and ip")
}

macro_rules! require_engines {
    () => {
        if !$crate::common::engines::require() {
            return;
        }
    };
}
pub(crate) use require_engines;

/// A `dockerd` of the test's own.
pub struct PrivateEngine {
    slot: usize,
    dir: tempfile::TempDir,
    bridge: String,
    daemon: Option<Child>,
    /// `tcp://127.0.0.1:PORT` with TLS, beside the unix socket ([`start_tls`](Self::start_tls)).
    tls_port: Option<u16>,
}

impl PrivateEngine {
    /// Start one and wait until it answers.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Start one that also listens on `tcp://127.0.0.1:PORT` with
    /// `--tlsverify`: its server certificate (for IP 127.0.0.1) and the
    /// client's are signed by a CA of the test's own; the client's files are
    /// in [`cert_path`](Self::cert_path), as Docker's `DOCKER_CERT_PATH` has them.
    pub fn start_tls() -> Self {
        Self::start_with(Some(super::free_port()))
    }

    fn start_with(tls_port: Option<u16>) -> Self {
        let slot = {
            let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
            let slot = (0..SLOTS)
                .find(|&s| !used[s] && !subnet_in_use(s))
                .expect("a free subnet slot for a private engine (at most 4 at once)");
            used[slot] = true;
            slot
        };
        // Bridge names are at most 15 bytes; unique per process and slot.
        let bridge = format!("rnr{:x}b{slot}", std::process::id() % 0xfffff);
        let dir = tempfile::Builder::new()
            .prefix("runner-engine")
            .tempdir_in("/var/tmp")
            .expect("a work directory for the engine");
        let mut engine = Self {
            slot,
            dir,
            bridge,
            daemon: None,
            tls_port,
        };
        if tls_port.is_some() {
            let tls = engine.dir.path().join("tls");
            let ca = test_ca(&tls.join("ca"));
            issue(
                &ca,
                &tls.join("server"),
                "serverAuth",
                "subjectAltName=IP:127.0.0.1\n",
            );
            issue(&ca, &engine.cert_path(), "clientAuth", "");
            std::fs::copy(ca.join("ca.pem"), engine.cert_path().join("ca.pem")).unwrap();
        }
        engine.spawn();
        engine
    }

    fn spawn(&mut self) {
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip");
            assert!(status.success(), "ip {}", args.join(" "));
        };
        ip(&["link", "add", "name", &self.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("172.{}.0.1/24", 28 + self.slot),
            "dev",
            &self.bridge,
        ]);
        ip(&["link", "set", &self.bridge, "up"]);
        let d = self.dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        // dockerd reads its dynamic port range from the kernel's
        // ip_local_port_range, once: in a mount namespace of its own (its
        // mounts stay out of the host's too), that file shows its block.
        let (first, last) = port_range(self.slot);
        std::fs::write(d.join("port-range"), format!("{first}\t{last}\n")).unwrap();
        let log = std::fs::File::create(d.join("log")).unwrap();
        let daemon = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /proc/sys/net/ipv4/ip_local_port_range && exec dockerd "$@""#)
            .arg(d.join("port-range"))
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("--host")
            .arg(self.host())
            .args(["--bridge", &self.bridge])
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver",
                "vfs",
            ])
            .args(self.tls_port.iter().flat_map(|port| {
                let tls = d.join("tls");
                [
                    "--host".into(),
                    format!("tcp://127.0.0.1:{port}"),
                    "--tlsverify".into(),
                    format!("--tlscacert={}", tls.join("ca/ca.pem").display()),
                    format!("--tlscert={}", tls.join("server/cert.pem").display()),
                    format!("--tlskey={}", tls.join("server/key.pem").display()),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd");
        self.daemon = Some(daemon);
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let answered = self
                .docker()
                .args(["info", "--format", "{{.ServerVersion}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                break;
            }
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the private engine did not answer within {START_WITHIN:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `unix:///…/docker.sock`: for `DOCKER_HOST` or a runner file.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `tcp://127.0.0.1:PORT`, TLS verified both ways ([`start_tls`](Self::start_tls) only).
    pub fn tls_host(&self) -> String {
        let port = self.tls_port.expect("an engine started with start_tls");
        format!("tcp://127.0.0.1:{port}")
    }

    /// The client's `ca.pem`, `cert.pem` and `key.pem` for [`tls_host`](Self::tls_host).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls/client")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `docker` client pointed at this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", self.host());
        cmd
    }

    /// Run `docker ARGS` against this engine; its stdout, trimmed. Panics
    /// with the engine's answer on failure.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.docker().args(args).output().expect("docker");
        assert!(
            out.status.success(),
            "docker {} on a private engine: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Copy `image` from the main engine (`docker save | docker load`).
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let stdout = save.stdout.take().unwrap();
        let loaded = self
            .docker()
            .arg("load")
            .stdin(stdout)
            .stdout(Stdio::null())
            .status()
            .expect("docker load");
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(
            loaded.success(),
            "docker load {image} into a private engine"
        );
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Freeze the daemon (SIGSTOP): its API stops answering while its
    /// containers (and their port proxies) go on serving, as when a host's
    /// engine hangs or its network to runner is cut.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaw a [`pause`](Self::pause)d daemon.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(daemon) = &self.daemon {
            // SAFETY: signalling a child this test started and has not reaped.
            unsafe { libc::kill(daemon.id() as i32, signal) };
        }
    }

    /// Stop the daemon (by its pid), waiting for it to exit.
    fn stop(&mut self) {
        // A paused daemon would hold SIGTERM until thawed.
        self.resume();
        let Some(mut daemon) = self.daemon.take() else {
            return;
        };
        // SAFETY: signalling a child this test started and has not reaped.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WITHIN;
        while daemon.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        // A paused daemon (a test that failed before resuming it) would
        // hang every call below.
        self.resume();
        if self.daemon.is_some() {
            let _ = self
                .docker()
                .args(["swarm", "leave", "--force"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
        remove_stray_gwbridge();
        // The daemon's mounts (shm, network namespaces) live in its own
        // mount namespace, gone with it: the work dir is plain files here.
        USED.lock().unwrap_or_else(|e| e.into_inner())[self.slot] = false;
        if !Path::new("/sys/class/net/docker0").exists() {
            eprintln!("warning: docker0 is gone after stopping a private engine");
        }
    }
}

/// A CA of the test's own in `dir` (`ca.pem`, `ca-key.pem`), made with the
/// openssl CLI (P-256 keys: quick to make). Returns `dir`.
pub fn test_ca(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let subject = [
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=runner test CA",
    ];
    openssl(
        dir,
        &[&["req", "-x509"][..], NEW_P256_KEY, &subject].concat(),
    );
    dir.to_path_buf()
}

/// `openssl req` arguments for a new, unencrypted P-256 key.
const NEW_P256_KEY: &[&str] = &[
    "-new",
    "-nodes",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
];

/// A certificate signed by the CA in `ca`, as `cert.pem` and `key.pem` in
/// `dir`, for `usage` (`serverAuth`, `clientAuth`) and any `extra` extensions.
pub fn issue(ca: &Path, dir: &Path, usage: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("ext.cnf"),
        format!("extendedKeyUsage={usage}\n{extra}"),
    )
    .unwrap();
    let request = [
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
        "-subj",
        "/CN=127.0.0.1",
    ];
    openssl(dir, &[&["req"][..], NEW_P256_KEY, &request].concat());
    let (ca_pem, ca_key) = (ca.join("ca.pem"), ca.join("ca-key.pem"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            ca_pem.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn subnet_in_use(slot: usize) -> bool {
    let out = Command::new("ip").args(["-4", "addr"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("172.{}.0.", 28 + slot)))
        .unwrap_or(true)
}

/// A Swarm (its own overlay bridge `docker_gwbridge`) leaves that interface
/// behind; it is ours unless the main engine has that network.
fn remove_stray_gwbridge() {
    let main_has_it = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|n| n == "docker_gwbridge")
        })
        .unwrap_or(true);
    let swarm_engines_left = USED
        .lock()
        .map(|used| used.iter().filter(|u| **u).count() > 1)
        .unwrap_or(true);
    if !main_has_it && !swarm_engines_left && Path::new("/sys/class/net/docker_gwbridge").exists() {
        let _ = Command::new("ip")
            .args(["link", "del", "docker_gwbridge"])
            .status();
    }
}

/// A Swarm of private engines: the first the manager, the rest workers,
/// on 127.0.0.1 ports of their own.
pub struct Swarm {
    pub manager_host: String,
}

impl Swarm {
    pub fn init(manager: &PrivateEngine, workers: &[&PrivateEngine]) -> Self {
        let port = super::free_port();
        let data_port = super::free_port();
        let listen = format!("127.0.0.1:{port}");
        manager.run(&[
            "swarm",
            "init",
            "--listen-addr",
            &listen,
            "--advertise-addr",
            &listen,
            "--data-path-port",
            &data_port.to_string(),
        ]);
        let token = manager.run(&["swarm", "join-token", "-q", "worker"]);
        for worker in workers {
            let own = format!("127.0.0.1:{}", super::free_port());
            worker.run(&[
                "swarm",
                "join",
                "--token",
                &token,
                "--listen-addr",
                &own,
                "--advertise-addr",
                &own,
                &listen,
            ]);
        }
        let nodes = 1 + workers.len();
        let deadline = Instant::now() + START_WITHIN;
        loop {
            let ready = manager
                .run(&["node", "ls", "--format", "{{.Status}}"])
                .lines()
                .filter(|s| *s == "Ready")
                .count();
            if ready == nodes {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ready} of {nodes} Swarm nodes ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self {
            manager_host: manager.host(),
        }
    }
}
