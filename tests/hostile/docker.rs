//! Hostile plugins: Docker. Names and image references that the engine
//! would resolve to something other than what the grant matched (`..`,
//! escapes, query and fragment characters, ID prefixes, globs crossing `/`),
//! and labels that would make the host register a container under a service
//! the plugin was never granted. A victim container and image, made by the
//! test with the docker CLI, must come through untouched.

use crate::common::hostile::{Calls, Verdict, exec};
use crate::common::{Env, Exec, docker_remove, require_docker, run, sleep_context, unique};
use std::process::Command;

/// What one test made on the engine: a granted image `hx<u>-app:v1`, an
/// ungranted victim image `hv<u>-secret:v1` and a running victim container
/// `hv<u>-victim`, all labelled and removed on drop.
struct Fixture {
    u: String,
    label: String,
    context: tempfile::TempDir,
    victim_id: String,
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Fixture {
    fn start() -> Self {
        let u = unique();
        let label = format!("runner-test=hostile-{u}");
        let context = tempfile::tempdir().unwrap();
        sleep_context(context.path(), &label);
        let mut f = Self {
            u: u.clone(),
            label: label.clone(),
            context,
            victim_id: String::new(),
        };
        let ctx = f.context.path().to_str().unwrap().to_string();
        for (tag, which) in [(f.app(), "app"), (f.secret(), "victim")] {
            docker_ok(&[
                "build",
                "-q",
                "-t",
                &tag,
                "--label",
                &label,
                "--label",
                &format!("which={which}"),
                &ctx,
            ]);
        }
        f.victim_id = docker_ok(&[
            "run",
            "-d",
            "--name",
            &f.victim(),
            "--label",
            &label,
            &f.secret(),
        ]);
        assert!(f.victim_running(), "the victim container runs");
        f
    }

    /// The granted image.
    fn app(&self) -> String {
        format!("hx{}-app:v1", self.u)
    }

    /// The victim's image, never granted.
    fn secret(&self) -> String {
        format!("hv{}-secret:v1", self.u)
    }

    /// The victim container, never granted.
    fn victim(&self) -> String {
        format!("hv{}-victim", self.u)
    }

    /// A granted container name.
    fn granted(&self, suffix: &str) -> String {
        format!("hx{}-{suffix}", self.u)
    }

    /// The grant patterns: every container and image named `hx<u>-*`.
    fn pattern(&self) -> String {
        format!("hx{}-*", self.u)
    }

    fn victim_running(&self) -> bool {
        let out = docker(&["inspect", "-f", "{{.State.Running}}", &self.victim()]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true"
    }

    /// The victim container still exists and runs; its image has no other name.
    fn check_victim(&self, v: &mut Verdict) {
        let state = docker(&["inspect", "-f", "{{.State.Status}}", &self.victim()]);
        v.check(
            self.victim_running(),
            format!(
                "the victim container {} was stopped or removed (now: {})",
                self.victim(),
                if state.status.success() {
                    String::from_utf8_lossy(&state.stdout).trim().to_string()
                } else {
                    "gone".into()
                }
            ),
        );
        let tags = docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .RepoTags}}",
            &self.secret(),
        ]);
        let tags = String::from_utf8_lossy(&tags.stdout).trim().to_string();
        v.check(
            tags == format!("[\"{}\"]", self.secret()),
            format!("the victim image's names changed: {tags}"),
        );
    }

    /// No granted-name container was created, and the victim is as it was.
    fn check_untouched(&self, v: &mut Verdict) {
        let created = self.granted_containers();
        v.check(
            created.is_empty(),
            format!("containers were created: {created}"),
        );
        self.check_victim(v);
    }

    /// Image references named `hx<u>*`, as `repo:tag`.
    fn granted_images(&self) -> Vec<String> {
        let list = docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let mut all: Vec<String> = list
            .lines()
            .filter(|l| l.starts_with(&format!("hx{}", self.u)))
            .map(str::to_string)
            .collect();
        all.sort();
        all
    }

    /// Containers named `hx<u>*` that exist.
    fn granted_containers(&self) -> String {
        docker_ok(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("name=hx{}", self.u),
        ])
    }

    fn exec(&self, env: &Env, calls: &Calls) -> Exec {
        let mut cmd = exec(env, calls);
        cmd.allow_container(&self.pattern())
            .allow_image(&self.pattern());
        cmd
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        docker_remove(
            &format!("name=hx{}", self.u),
            &format!("reference=hx{}*", self.u),
        );
        docker_remove(
            &format!("label={}", self.label),
            &format!("label={}", self.label),
        );
    }
}

/// `image` in a registry on a closed local port: what a push of it tries to
/// reach, should the engine accept the reference, is 127.0.0.1 (nothing may
/// go to Docker Hub).
fn local(image: &str) -> String {
    format!("127.0.0.1:9/{image}")
}

/// Names outside Docker's `[a-zA-Z0-9][a-zA-Z0-9_.-]+` (128 at most), each
/// starting with the granted prefix, and whether the name is printable (so
/// the message can be checked for it).
fn bad_names(f: &Fixture) -> Vec<(String, bool)> {
    let (x, v) = (f.granted("a"), f.victim());
    vec![
        (format!("{x}/../{v}"), true),
        (format!("{x}/%2e%2e/{v}"), true),
        (format!("{x}/..%2f{v}"), true),
        (format!("{x}?all=1"), true),
        (format!("{x}#frag"), true),
        (format!("{x} b"), true),
        (format!("{x}{{nul}}"), false),
        (String::new(), false),
        (format!("{x}{}", "a".repeat(130)), true),
    ]
}

#[test]
fn run_all_checks_every_spec_and_bounds_its_list() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let (ok, victim) = (f.granted("ra"), f.victim());
    let bad = format!("{}/../{victim}", f.granted("rb"));
    let app = f.app();
    let names = format!("{ok},{victim},{bad}");
    let many = f.granted("rc");
    let calls = Calls::new()
        .call(
            "mixed",
            "docker.run-all",
            &[("names", &names), ("image", &app), ("labels", &f.label)],
        )
        .call(
            "too-many",
            "docker.run-all",
            &[
                ("names", &many),
                ("image", &app),
                ("labels", &f.label),
                ("repeat", "33"),
            ],
        );
    let out = run(&mut f.exec(&env, &calls)).expect_code(0);
    let mut v = Verdict::new(&out);
    // Each spec is checked on its own: the granted one runs, the victim's
    // name is denied, an escaping name is invalid; 33 specs are one refusal.
    let mixed = out.answer("mixed.results");
    v.check(
        mixed == "ok,denied,invalid-config",
        format!("run-all results: {mixed}"),
    );
    let too_many = out.answer("too-many.results");
    v.check(
        too_many == "invalid-config",
        format!("33 specs: {too_many}"),
    );
    let created = f.granted_containers();
    v.check(
        created.trim() == ok,
        format!("containers created: {created}"),
    );
    f.check_victim(&mut v);
    v.finish();
}

#[test]
fn container_names_outside_dockers_rule_are_invalid_config() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let ops = [
        "inspect", "logs", "kill", "remove", "stop", "start", "wait", "run",
    ];
    let names = bad_names(&f);
    let app = f.app();
    let mut calls = Calls::new();
    for (i, (name, _)) in names.iter().enumerate() {
        for op in ops {
            let mut args = vec![("name", name.as_str())];
            if op == "run" {
                args.extend([("image", app.as_str()), ("labels", f.label.as_str())]);
            }
            calls = calls.call(&format!("{op}-{i}"), &format!("docker.{op}"), &args);
        }
    }
    let out = run(&mut f.exec(&env, &calls)).expect_code(0);
    let mut v = Verdict::new(&out);
    for (i, (name, printable)) in names.iter().enumerate() {
        for op in ops {
            let mut needles = vec!["container name"];
            if *printable {
                needles.push(name);
            }
            v.refused(&format!("{op}-{i}"), "invalid-config", &needles);
        }
    }
    f.check_untouched(&mut v);
    v.finish();
}

#[test]
fn image_references_outside_the_grammar_are_invalid_config() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let (app, secret, u) = (f.app(), f.secret(), f.u.clone());
    let secret_repo = secret.trim_end_matches(":v1");
    let refs = [
        format!("hx{u}-app:x/../{secret}"),
        format!("hx{u}-app:v1/../../{secret_repo}"),
        format!("hx{u}-APP:v1"),
        format!("hx{u}-app/..:v1"),
        format!("hx{u}-a/../{secret}"),
        format!("hx{u}-app:v1/../.."),
    ];
    // The engine resolves `..` in the API path (`/images/NAME/push`): a push
    // must not climb out of the closed local registry to Docker Hub, so its
    // references climb no further than that.
    let l = local(&format!("hx{u}"));
    let push_refs = [
        format!("{l}-a/x/../../{secret}"),
        format!("{l}-app:v1/x/../../{secret_repo}"),
        format!("{l}-APP:v1"),
        format!("{l}-app/.hidden:v1"),
        format!("{l}-a/b/%2e%2e/{secret}"),
        format!("{l}-a/b/c/..%2f..%2f{secret}"),
    ];
    let context = f.context.path().to_str().unwrap().to_string();
    let mut calls = Calls::new();
    for (i, r) in refs.iter().enumerate() {
        let name = f.granted(&format!("r{i}"));
        let copy = format!("hx{u}-app:copy{i}");
        calls = calls
            .call(
                &format!("run-{i}"),
                "docker.run",
                &[("name", &name), ("image", r), ("labels", &f.label)],
            )
            .call(
                &format!("tag-source-{i}"),
                "docker.tag",
                &[("source", r), ("target", &copy)],
            )
            .call(
                &format!("tag-target-{i}"),
                "docker.tag",
                &[("source", &app), ("target", r)],
            )
            .call(&format!("pull-{i}"), "docker.pull", &[("image", r)])
            .call(
                &format!("push-{i}"),
                "docker.push",
                &[("image", &push_refs[i])],
            )
            .call(
                &format!("build-{i}"),
                "docker.build",
                &[("context", &context), ("tag", r)],
            );
    }
    let mut cmd = f.exec(&env, &calls);
    cmd.allow_image(&local(&f.pattern())).args([
        "--allow-build",
        "--allow-push",
        "--allow-dir",
        &context,
    ]);
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    for i in 0..refs.len() {
        for op in ["run", "tag-source", "tag-target", "pull", "push", "build"] {
            v.refused(&format!("{op}-{i}"), "invalid-config", &["image reference"]);
        }
    }
    let images = f.granted_images();
    v.check(
        images == [app],
        format!("images were tagged or built under granted names: {images:?}"),
    );
    f.check_untouched(&mut v);
    v.finish();
}

#[test]
fn image_globs_do_not_cross_a_slash() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let (app, u) = (f.app(), f.u.clone());
    let nested = format!("hx{u}-a/victim:v1");
    let name = f.granted("g");
    let calls = Calls::new()
        .call(
            "tag",
            "docker.tag",
            &[("source", &app), ("target", &nested)],
        )
        .call(
            "run",
            "docker.run",
            &[("name", &name), ("image", &nested), ("labels", &f.label)],
        )
        .call("push", "docker.push", &[("image", &local(&nested))]);
    let mut cmd = f.exec(&env, &calls);
    cmd.args(["--allow-image", &local(&f.pattern()), "--allow-push"]);
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    for label in ["tag", "run"] {
        v.refused(label, "denied", &[&nested]);
    }
    v.refused("push", "denied", &[&local(&nested)]);
    v.check(
        !docker(&["image", "inspect", &nested]).status.success(),
        format!("{nested} was created"),
    );
    f.check_victim(&mut v);
    v.finish();
}

#[test]
fn a_container_id_prefix_does_not_reach_the_victim() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    // Granted by a pattern that matches any hex string, the victim's ID
    // prefix is a granted-looking name the engine would resolve to the victim.
    let prefix = f.victim_id[..12].to_string();
    let calls = Calls::new()
        .call("inspect", "docker.inspect", &[("name", &prefix)])
        .call("logs", "docker.logs", &[("name", &prefix)])
        .call("stop", "docker.stop", &[("name", &prefix)])
        .call("kill", "docker.kill", &[("name", &prefix)])
        .call("remove", "docker.remove", &[("name", &prefix)]);
    let mut cmd = exec(&env, &calls);
    cmd.args(["--allow-container", "[0-9a-f]*"]);
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    for label in ["inspect", "logs", "stop", "kill", "remove"] {
        v.refused_as(label, &["not-found", "denied"], &[&prefix]);
    }
    v.check(
        !out.stdout.contains(&f.victim()),
        "the victim's details (its name) leaked",
    );
    f.check_victim(&mut v);
    v.finish();
}

#[test]
fn reserved_labels_cannot_hijack_a_registration() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let payments = format!("hv{}-payments", f.u);
    let app = f.app();
    let hijacks = [
        format!(
            "runner.service={payments},runner.service-port=80,runner.service-tags=x,{}",
            f.label
        ),
        format!("runner.managed=false,{}", f.label),
        format!("runner.anything=1,{}", f.label),
    ];
    let mut calls = Calls::new();
    for (i, labels) in hijacks.iter().enumerate() {
        let name = f.granted(&format!("h{i}"));
        calls = calls.call(
            &format!("run-{i}"),
            "docker.run",
            &[
                ("name", &name),
                ("image", &app),
                ("labels", labels),
                ("port", "80"),
            ],
        );
    }
    let out = run(f.exec(&env, &calls).allow_service(&f.pattern())).expect_code(0);
    let mut v = Verdict::new(&out);
    for i in 0..hijacks.len() {
        v.refused(&format!("run-{i}"), "invalid-config", &["reserved"]);
    }
    let catalog = run(env.runner().args(["catalog", "list", &payments])).expect_code(0);
    v.check(
        !catalog.stdout.contains(&payments),
        format!(
            "an instance was registered under {payments}: {}",
            catalog.stdout.replace('\n', " | ")
        ),
    );
    f.check_untouched(&mut v);
    v.finish();
}

/// A container a plugin runs gets finite memory (no extra swap) and pids
/// limits by default; the operator raises them per grant.
#[test]
fn containers_a_plugin_runs_have_limits_the_grant_can_raise() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let limits = |name: &str| {
        docker_ok(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.PidsLimit}} {{.HostConfig.NanoCpus}}",
            name,
        ])
        .trim()
        .to_string()
    };
    let (default, raised) = (f.granted("limits-default"), f.granted("limits-raised"));
    for (name, extra) in [
        (&default, None),
        (&raised, Some("memory=2GiB,pids=4096,cpus=0.5")),
    ] {
        let calls = Calls::new().call(
            "run",
            "docker.run",
            &[("name", name.as_str()), ("image", &f.app())],
        );
        let mut cmd = f.exec(&env, &calls);
        if let Some(extra) = extra {
            cmd.args(["--container-limits", extra]);
        }
        let out = run(&mut cmd).expect_code(0);
        assert_eq!(out.output("run").as_deref(), Some("ok"), "{}", out.stdout);
    }
    assert_eq!(limits(&default), "1073741824 1073741824 1024 0");
    assert_eq!(limits(&raised), "2147483648 2147483648 4096 500000000");
    // A limit that makes no sense is refused before anything runs.
    let calls = Calls::new().call(
        "run",
        "docker.run",
        &[("name", &f.granted("limits-bad")), ("image", &f.app())],
    );
    run(f.exec(&env, &calls).args(["--container-limits", "pids=0"]))
        .expect_code(2)
        .stderr_has("--container-limits");
    assert!(!f.granted_containers().contains("limits-bad"));
}

/// An image may carry `runner.*` labels of its own (the plugin built it, or
/// chose it): the engine merges them into the container's, and they must
/// register nothing.
#[test]
fn an_images_own_runner_labels_register_nothing() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let payments = format!("hv{}-payments", f.u);
    let labelled = format!("hx{}-labelled:v1", f.u);
    let ctx = f.context.path().to_str().unwrap().to_string();
    docker_ok(&[
        "build",
        "-q",
        "-t",
        &labelled,
        "--label",
        &f.label,
        "--label",
        &format!("runner.service={payments}"),
        "--label",
        "runner.service-port=80",
        "--label",
        "runner.managed=true",
        &ctx,
    ]);
    let calls = Calls::new().call(
        "run",
        "docker.run",
        &[
            ("name", &f.granted("labelled")),
            ("image", &labelled),
            ("port", "80"),
        ],
    );
    let out = run(f.exec(&env, &calls).allow_service(&format!("hv{}-*", f.u))).expect_code(0);
    assert_eq!(out.output("run").as_deref(), Some("ok"), "{}", out.stdout);
    let catalog = run(env.runner().args(["catalog", "list", &payments])).expect_code(0);
    assert!(
        !catalog.stdout.contains(&f.granted("labelled")),
        "the image's labels registered the container under {payments}: {}",
        catalog.stdout
    );
    // A later run's reconcile registers nothing from them either.
    run(f.exec(&env, &Calls::new()).args(["--service", "books-ms"])).expect_code(0);
    let catalog = run(env.runner().args(["catalog", "list", &payments])).expect_code(0);
    assert!(
        !catalog.stdout.contains(&f.granted("labelled")),
        "{}",
        catalog.stdout
    );
}

/// The engine takes an image ID (or an ID prefix) where a reference is
/// expected; `*` matches the hex, but never the image's names with a `/`.
#[test]
fn an_image_id_does_not_stand_in_for_an_ungranted_name() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let hidden = format!("127.0.0.1:9/hv{}/secret:v1", f.u);
    docker_ok(&["tag", &f.secret(), &hidden]);
    docker_ok(&["rmi", &f.secret()]);
    let id = docker_ok(&["image", "inspect", "-f", "{{.Id}}", &hidden]);
    let short = id.trim_start_matches("sha256:")[..12].to_string();
    let calls = Calls::new()
        .call(
            "run",
            "docker.run",
            &[("name", &f.granted("byid")), ("image", &short)],
        )
        .call(
            "run-full",
            "docker.run",
            &[("name", &f.granted("byid2")), ("image", &id)],
        )
        .call(
            "tag",
            "docker.tag",
            &[("source", &short), ("target", &f.granted("copy:v1"))],
        );
    let mut cmd = exec(&env, &calls);
    cmd.args(["--allow-container", &f.pattern(), "--allow-image", "*"]);
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused_as("run", &["not-found", "invalid-config"], &[]);
    v.refused_as("run-full", &["not-found", "invalid-config"], &[]);
    v.refused_as("tag", &["not-found", "invalid-config"], &[]);
    let images = f.granted_images();
    v.check(
        images == [f.app()],
        format!("the hidden image was copied to a granted name: {images:?}"),
    );
    let created = f.granted_containers();
    v.check(
        created.is_empty(),
        format!("containers ran from it: {created}"),
    );
    v.finish();
    // The hidden tag carries the fixture's label: Drop removes it.
}

/// A build copies its base images into the new tag: `FROM` an ungranted
/// image is refused, as running or tagging it would be.
#[test]
fn a_build_reads_only_granted_base_images() {
    require_docker!();
    let f = Fixture::start();
    let env = Env::new();
    let ctx = tempfile::tempdir().unwrap();
    let dir = ctx.path().display().to_string();
    for (name, dockerfile) in [
        ("from", format!("FROM {}\n", f.secret())),
        (
            "copy",
            format!("FROM scratch\nCOPY --from={} /usr /usr\n", f.secret()),
        ),
        ("arg", "ARG B\nFROM $B\n".to_string()),
    ] {
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
        let calls = Calls::new().call(
            name,
            "docker.build",
            &[("context", &dir), ("tag", &f.granted("built:v1"))],
        );
        let out = run(f
            .exec(&env, &calls)
            .args(["--allow-build", "--allow-dir", &dir]))
        .expect_code(0);
        let mut v = Verdict::new(&out);
        v.refused_as(name, &["denied", "invalid-config"], &[]);
        v.finish();
    }
    let images = f.granted_images();
    assert_eq!(images, [f.app()], "a build copied the victim image");
}
