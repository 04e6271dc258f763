//! The journal and the proxy switch, called as an attacker would: oversized
//! or malformed journal entries, a journal without the deploy lock or from
//! a hook, and proxy switches naming files, servers and backends that are
//! really config syntax or paths.

use crate::common::hostile::{Calls, Verdict, exec};
use crate::common::{Env, Exec, Output, RunnerFile, Stage, Table, plugin, run};

/// A runner file with two proxies (`p`: files in `conf/`, holding
/// `keep.conf`; `h`: HAProxy at a missing socket) and the operator's
/// template `templates/up.ctmpl`: (the directory, the template's path).
fn proxy_dir(env: &Env) -> (std::path::PathBuf, String) {
    let dir = env.path().join("proxy");
    std::fs::create_dir_all(dir.join("conf")).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("templates/up.ctmpl"),
        "upstream x { server 127.0.0.1:8080; }\n",
    )
    .unwrap();
    std::fs::write(dir.join("conf/keep.conf"), "keep\n").unwrap();
    RunnerFile::new()
        .proxy(
            "p",
            Table::new()
                .set("config_dir", "conf")
                .set("reload", ["true"]),
        )
        .proxy(
            "h",
            Table::new()
                .set("driver", "haproxy")
                .set("admin_socket", "no-such.sock"),
        )
        .write(&dir);
    let template = dir.join("templates/up.ctmpl").display().to_string();
    (dir, template)
}

/// The hostile guest making `calls` in `dir`, granted proxy `p` and the templates.
fn exec_in(env: &Env, dir: &std::path::Path, calls: &Calls) -> Exec {
    let mut cmd = exec(env, calls);
    cmd.current_dir(dir)
        .file("runner.toml")
        .allow_proxy("p")
        .allow_dir("templates");
    cmd
}

fn journal_calls() -> Calls {
    Calls::new()
        .call("bad-step", "journal.write", &[("step", "Switch;rm")])
        .call("long-step", "journal.write", &[("step", &"a".repeat(65))])
        .call("many", "journal.write", &[("step", "x"), ("count", "33")])
        .call(
            "huge",
            "journal.write",
            &[("step", "x"), ("count", "1"), ("size", "2000")],
        )
        .call("ok", "journal.write", &[("step", "prepare")])
        .call("read", "journal.read", &[])
}

#[test]
fn journal_entries_are_bounded_and_need_the_lock() {
    let env = Env::new();
    // Without the deploy lock there is no journal.
    let mut cmd = exec(&env, &journal_calls());
    cmd.args(["--service", "victim"]);
    let out: Output = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused("ok", "denied", &["deploy lock"]);
    v.finish();

    // Under the lock: malformed entries are invalid-config, nothing stored.
    let mut cmd = exec(&env, &journal_calls());
    cmd.args(["--service", "victim", "--lock"]);
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused("bad-step", "invalid-config", &["a-z"]);
    v.refused("long-step", "invalid-config", &["1-64"]);
    v.refused("many", "invalid-config", &["at most 32"]);
    v.refused("huge", "invalid-config", &["1024 bytes"]);
    v.check(
        out.answer("ok") == "ok",
        format!("ok: {}", out.answer("ok")),
    );
    v.check(
        out.output("read.step").as_deref() == Some("prepare"),
        format!("read: {:?}", out.output("read.step")),
    );
    v.finish();
    // The entry lives in the reserved namespace, which no kv grant reaches.
    let mut cmd = exec(
        &env,
        &Calls::new().call("get", "kv.get", &[("key", "_runner/victim/journal")]),
    );
    cmd.allow_kv("_runner/");
    let out = run(&mut cmd).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused("get", "denied", &["reserved"]);
    v.finish();
}

#[test]
fn proxy_switch_arguments_cannot_carry_syntax_or_paths() {
    let env = Env::new();
    let (dir, template) = proxy_dir(&env);
    let calls = Calls::new()
        .call(
            "dotdot",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:8080"),
                ("file", "../escape.conf"),
                ("template", &template),
            ],
        )
        .call(
            "hidden",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:8080"),
                ("file", ".runner-proxy.lock"),
                ("template", &template),
            ],
        )
        .call(
            "server-syntax",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1;include /etc/passwd:80"),
                ("file", "x.conf"),
                ("template", &template),
            ],
        )
        .call(
            "port-zero",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:0"),
                ("file", "x.conf"),
                ("template", &template),
            ],
        )
        .call(
            "wrong-server",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:9999"),
                ("file", "x.conf"),
                ("template", &template),
            ],
        )
        .call(
            "backend-command",
            "proxy.switch",
            &[
                ("proxy", "h"),
                ("upstream", "x; shutdown sessions server x/s1"),
                ("servers", "127.0.0.1:8080"),
            ],
        )
        .call(
            "not-granted",
            "proxy.switch",
            &[
                ("proxy", "other"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:8080"),
            ],
        )
        .call(
            "ok",
            "proxy.switch",
            &[
                ("proxy", "p"),
                ("upstream", "x"),
                ("servers", "127.0.0.1:8080"),
                ("file", "x.conf"),
                ("template", &template),
            ],
        );
    let out = run(exec_in(&env, &dir, &calls).allow_proxy("h")).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused("dotdot", "invalid-config", &["plain file name"]);
    v.refused("hidden", "invalid-config", &["plain file name"]);
    v.refused("server-syntax", "invalid-config", &["not an address"]);
    v.refused("port-zero", "invalid-config", &["not an address"]);
    v.refused(
        "wrong-server",
        "failed",
        &["does not send", "nothing was switched"],
    );
    v.refused("backend-command", "invalid-config", &["backend"]);
    v.refused("not-granted", "denied", &["--allow-proxy other"]);
    v.check(
        out.answer("ok") == "ok",
        format!("ok: {}", out.answer("ok")),
    );
    v.check(
        !env.path().join("escape.conf").exists() && !dir.join("escape.conf").exists(),
        "a file was written outside the config dir",
    );
    v.check(
        std::fs::read_to_string(dir.join("conf/keep.conf")).unwrap() == "keep\n",
        "another file in the config dir changed",
    );
    v.check(
        std::fs::read_to_string(dir.join("conf/x.conf"))
            .unwrap_or_default()
            .contains("127.0.0.1:8080"),
        "the good switch did not write x.conf",
    );
    v.finish();
}

/// In a pipeline only the deploy stage has the journal: an earlier stage
/// (a third-party build plugin, say) cannot forge the entry the deploy
/// stage would recover from.
#[test]
fn only_the_deploy_stage_of_a_pipeline_has_the_journal() {
    let env = Env::new();
    let forge = Calls::new().call(
        "forge",
        "journal.write",
        &[
            ("step", "stop-old"),
            ("details", "known-good=green,candidate=blue"),
        ],
    );
    let read = Calls::new().call("read", "journal.read", &[]);
    let hostile = plugin("hostile");
    let hostile = hostile.to_str().unwrap();
    let file = RunnerFile::new()
        .service("books-ms")
        .stage(Stage::new("build", hostile).configs(forge.settings()))
        .stage(Stage::new("deploy", hostile).configs(read.settings()))
        .write(env.path());
    let out = run(env.runner().args(["run", "--json"]).arg(&file)).expect_code(0);
    assert!(
        out.stdout.contains("denied: journal"),
        "the build stage wrote the journal:\n{}",
        out.stdout
    );
    let journal = run(env.runner().args(["kv", "get", "_runner/books-ms/journal"]));
    assert_ne!(
        journal.code, 0,
        "a journal entry exists: {}",
        journal.stdout
    );
}

#[test]
fn templates_cannot_write_hidden_files_into_a_proxy_config_dir() {
    let env = Env::new();
    let (dir, template) = proxy_dir(&env);
    let calls = Calls::new()
        .call(
            "marker",
            "template.render",
            &[
                ("template", &template),
                (
                    "destination",
                    &dir.join("conf/.keep.conf.runner-absent")
                        .display()
                        .to_string(),
                ),
            ],
        )
        .call(
            "lock",
            "template.render",
            &[
                ("template", &template),
                (
                    "destination",
                    &dir.join("conf/.runner-proxy.lock").display().to_string(),
                ),
            ],
        );
    let out = run(&mut exec_in(&env, &dir, &calls)).expect_code(0);
    let mut v = Verdict::new(&out);
    v.refused("marker", "invalid-config", &["hidden file"]);
    v.refused("lock", "invalid-config", &["hidden file"]);
    v.check(
        !dir.join("conf/.keep.conf.runner-absent").exists() && dir.join("conf/keep.conf").exists(),
        "the marker was written",
    );
    v.finish();
}
