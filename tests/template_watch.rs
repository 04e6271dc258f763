//! `runner template watch`: consul-template's watch mode on both backends.
//! A change re-renders DEST (after the quiescence wait), the command runs
//! only when DEST changed, a burst of changes renders once, and on Consul the
//! watcher survives an index reset and an outage.

use crate::common::consul::ConsulServer;
use crate::common::{Env, run};
use runner::registry::{EmbeddedRegistry, KvStore};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEMPLATE: &str =
    "color={{key \"app/color\"}}{{range ls \"app/flags\"}} {{.Key}}={{.Value}}{{end}}\n";

/// Where the data comes from: writes go straight to the backend, as another
/// client's would.
enum Backend {
    Embedded(EmbeddedRegistry),
    Consul(ConsulServer),
}

impl Backend {
    fn put(&self, key: &str, value: &str) {
        match self {
            Backend::Embedded(registry) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime
                    .block_on(registry.kv_put(key, value.as_bytes()))
                    .unwrap();
            }
            Backend::Consul(server) => server.put(key, value),
        }
    }
}

/// A running `runner template watch`, its output file, command log and stderr.
struct Watch {
    child: Child,
    dest: PathBuf,
    runs: PathBuf,
    log: PathBuf,
}

impl Watch {
    fn start(env: &Env, backend: &Backend) -> Self {
        let runs = env.path().join("runs");
        Self::start_with(env, backend, &format!("echo run >> {}", runs.display()))
    }

    /// With `exec` as the command (the default appends a line to `runs`).
    fn start_with(env: &Env, backend: &Backend, exec: &str) -> Self {
        let src = env.path().join("app.ctmpl");
        std::fs::write(&src, TEMPLATE).unwrap();
        let (dest, runs, log) = (
            env.path().join("out/app.conf"),
            env.path().join("runs"),
            env.path().join("watch.log"),
        );
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("runner"));
        cmd.current_dir(env.path())
            .env("RUNNER_STATE_DIR", env.state_dir())
            .env_remove("CONSUL_HTTP_ADDR")
            .args(["template", "watch"])
            .arg(&src)
            .arg(&dest)
            .args(["--exec", exec])
            // A quiet time long enough that the burst below (five durable
            // writes) fits in it even on a loaded machine.
            .args(["--wait", "1s:10s", "--query-wait", "1s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Backend::Consul(server) = backend {
            cmd.env("CONSUL_HTTP_ADDR", server.url());
        }
        Self {
            child: cmd.spawn().expect("start runner template watch"),
            dest,
            runs,
            log,
        }
    }

    fn content(&self) -> String {
        std::fs::read_to_string(&self.dest).unwrap_or_default()
    }

    fn runs(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .unwrap_or_default()
            .lines()
            .count()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many renders left DEST as it was.
    fn unchanged(&self) -> usize {
        self.log().matches("unchanged").count()
    }

    /// Poll (bounded) until `done`, failing with the watcher's log.
    fn wait_until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what} never happened; DEST: {:?}\nwatch log:\n{}",
                self.content(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until DEST is `content` and the command has run `runs` times in
    /// all (it runs just after the write), then check it ran no more.
    fn wait_for_render(&self, content: &str, runs: usize) {
        self.wait_until(&format!("DEST = {content:?} and {runs} runs"), |w| {
            w.content() == content && w.runs() >= runs
        });
        assert_eq!(self.runs(), runs, "the command ran too often");
    }

    /// How many renders wrote DEST.
    fn written(&self) -> usize {
        self.log().matches(": written").count()
    }

    /// SIGTERM: the watcher stops cleanly.
    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").arg(&pid).status().unwrap().success());
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "watch exited with {status}:\n{}",
            self.log()
        );
        self.log()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What both backends must do: render, re-render on change, run the command
/// only on change, and render a burst of changes once.
fn watches_renders_on_change(env: &Env, backend: &Backend) -> Watch {
    backend.put("app/color", "blue");
    let watch = Watch::start(env, backend);
    watch.wait_for_render("color=blue\n", 1);

    // A change to a key the template reads: re-rendered, the command runs.
    backend.put("app/color", "green");
    watch.wait_for_render("color=green\n", 2);

    // A write that leaves the output as it was: rendered, nothing written,
    // the command not run.
    let unchanged = watch.unchanged();
    backend.put("app/color", "green");
    watch.wait_until("a re-render of an unchanged value", |w| {
        w.unchanged() > unchanged
    });
    assert_eq!(watch.runs(), 2, "the command ran without a change");

    // Keys under a watched prefix, in a burst quicker than the quiet time:
    // one render, one command.
    let written = watch.written();
    for i in 1..=5 {
        backend.put("app/flags/canary", &i.to_string());
    }
    watch.wait_for_render("color=green canary=5\n", 3);
    assert_eq!(
        watch.written(),
        written + 1,
        "a burst of changes rendered more than once"
    );
    watch
}

#[test]
fn template_watch_on_the_embedded_store() {
    let env = Env::new();
    let backend = Backend::Embedded(
        EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(10)).unwrap(),
    );
    let watch = watches_renders_on_change(&env, &backend);
    assert!(watch.stop().contains("stopped watching"));
}

#[test]
fn template_watch_on_consul_survives_an_index_reset_and_an_outage() {
    let env = Env::new();
    let backend = Backend::Consul(ConsulServer::start(None));
    let watch = watches_renders_on_change(&env, &backend);
    let Backend::Consul(server) = &backend else {
        unreachable!()
    };

    // The index goes backwards (a snapshot restore): the watcher resets to 0
    // and still sees the next change, though its index is below the old one.
    server.reset_index(1);
    server.put("app/color", "red");
    watch.wait_for_render("color=red canary=5\n", 4);
    assert!(
        watch.log().contains("the registry index went back"),
        "{}",
        watch.log()
    );

    // Consul goes down: the last output stays, the watcher retries, and it
    // renders the change made meanwhile once Consul is back.
    server.set_down(true);
    watch.wait_until("a retry while Consul is down", |w| {
        w.log().contains("retrying in")
    });
    server.put("app/color", "yellow");
    assert_eq!(watch.content(), "color=red canary=5\n");
    server.set_down(false);
    watch.wait_for_render("color=yellow canary=5\n", 5);
    assert!(watch.stop().contains("stopped watching"));
}

#[test]
fn template_watch_refuses_a_broken_template_at_once() {
    let env = Env::new();
    let src = env.path().join("broken.ctmpl");
    std::fs::write(&src, "{{key \"app/color\"").unwrap();
    let mut cmd = env.runner();
    cmd.args(["template", "watch"])
        .arg(&src)
        .arg(env.path().join("out.conf"));
    run(&mut cmd)
        .expect_code(2)
        .stderr_has("broken.ctmpl: template does not parse");
}

/// A failed command (a reload that did not take) is retried until it works,
/// though DEST no longer changes.
#[test]
fn template_watch_retries_a_failed_command() {
    let env = Env::new();
    let backend = Backend::Embedded(
        EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(10)).unwrap(),
    );
    backend.put("app/color", "blue");
    let allow = env.path().join("reload-works");
    let watch = Watch::start_with(
        &env,
        &backend,
        &format!(
            "echo run >> {}; test -e {}",
            env.path().join("runs").display(),
            allow.display()
        ),
    );
    watch.wait_until("a second try of the failing command", |w| w.runs() >= 2);
    assert!(
        watch.log().contains("exited with exit status: 1"),
        "{}",
        watch.log()
    );
    std::fs::write(&allow, "").unwrap();
    watch.wait_until("the command to succeed", |w| {
        w.log().contains("ran `echo run")
    });
    assert_eq!(watch.content(), "color=blue\n");
    assert!(watch.stop().contains("stopped watching"));
}

/// consul-template's own form, `-t SRC:DEST[:CMD]`, repeatable: each
/// template rendered, each command run only when its file changed.
#[test]
fn templates_can_be_given_as_consul_template_specs() {
    let env = Env::new();
    let backend = Backend::Embedded(
        EmbeddedRegistry::open(&env.state_dir(), Duration::from_secs(10)).unwrap(),
    );
    backend.put("app/color", "blue");
    std::fs::write(env.path().join("a.ctmpl"), "a={{key \"app/color\"}}\n").unwrap();
    std::fs::write(env.path().join("b.ctmpl"), "b={{key \"app/color\"}}\n").unwrap();
    let render = || {
        let mut cmd = env.runner();
        cmd.args([
            "template",
            "render",
            "-t",
            "a.ctmpl:a.conf:echo a >> runs",
            "-t",
            "b.ctmpl:b.conf",
        ]);
        run(&mut cmd)
    };
    render().expect_code(0);
    let read = |f: &str| std::fs::read_to_string(env.path().join(f)).unwrap_or_default();
    assert_eq!(
        (read("a.conf"), read("b.conf")),
        ("a=blue\n".into(), "b=blue\n".into())
    );
    render().expect_code(0);
    assert_eq!(read("runs"), "a\n", "the command ran only on the change");

    let mut bad = env.runner();
    bad.args(["template", "render", "-t", "only-a-source.ctmpl"]);
    run(&mut bad)
        .expect_code(2)
        .stderr_has("is not SRC:DEST[:CMD]");
}
