//! Hostile plugins: files the host reads on a plugin's behalf, and its logs.
//! A JUnit report that is a symlink out of the plugin's directory must not
//! be read; one huge log message, or a flood of lines, must not flood
//! runner's own output.

use crate::common::hostile::{Calls, exec, tail};
use crate::common::{Env, RunnerFile, Stage, plugin, run};

/// A JUnit document whose suite name marks it as the operator's secret.
const SECRET_XML: &str = r#"<?xml version="1.0"?><testsuite name="SECRET-SUITE" tests="1" failures="0" errors="0"><testcase name="leak"/></testsuite>"#;

#[test]
fn junit_does_not_follow_a_report_symlink_out_of_the_grant() {
    let env = Env::new();
    let secret = env.path().join("secret.xml");
    std::fs::write(&secret, SECRET_XML).unwrap();
    std::fs::create_dir_all(env.path().join("work/reports")).unwrap();
    // A report the stage legitimately writes, so the merge has something.
    let honest = r#"<testsuite name="honest" tests="1" failures="0" errors="0"><testcase name="ok"/></testsuite>"#;

    let hostile = plugin("hostile");
    let stage = |name: &str, calls: Calls, report: &str| {
        Stage::new(name, hostile.to_str().unwrap())
            .configs(calls.settings())
            .config("report", report)
            .grant("dirs", ["work/reports:/reports:rw"])
    };
    let relative = Calls::new().call(
        "link",
        "fs.symlink",
        &[
            ("target", "../../secret.xml"),
            ("link", "/reports/relative.xml"),
        ],
    );
    // WASI refuses to create a symlink with an absolute target (so this one
    // is expected not to be planted); the same file is reached by climbing.
    let climbing = format!(
        "{}{}",
        "../".repeat(32),
        secret.to_str().unwrap().trim_start_matches('/')
    );
    let climb = Calls::new().call(
        "link",
        "fs.symlink",
        &[("target", &climbing), ("link", "/reports/climb.xml")],
    );
    let absolute = Calls::new().call(
        "link",
        "fs.symlink",
        &[
            ("target", secret.to_str().unwrap()),
            ("link", "/reports/absolute.xml"),
        ],
    );
    let written = Calls::new().call(
        "write",
        "fs.write",
        &[("path", "/reports/honest.xml"), ("content", honest)],
    );
    let file = RunnerFile::new()
        .service("books-ms")
        .stage(stage("honest", written, "/reports/honest.xml"))
        .stage(stage("relative", relative, "/reports/relative.xml"))
        .stage(stage("climb", climb, "/reports/climb.xml"))
        .stage(stage("absolute", absolute, "/reports/absolute.xml"))
        .write(env.path());
    let junit = env.path().join("junit.xml");
    let out = run(env
        .runner()
        .arg("run")
        .arg(&file)
        .arg("--json")
        .arg("--junit")
        .arg(&junit))
    .expect_code(0);
    // Did the plugin manage to plant each link? (It may not, for an absolute target.)
    let reports = env.path().join("work/reports");
    let planted: Vec<&str> = ["relative.xml", "climb.xml", "absolute.xml"]
        .into_iter()
        .filter(|f| reports.join(f).symlink_metadata().is_ok())
        .collect();
    assert!(
        planted.contains(&"relative.xml") && planted.contains(&"climb.xml"),
        "the plugin could not create its relative symlinks:\n{}",
        out.stdout
    );
    let merged = std::fs::read_to_string(&junit).unwrap_or_default();
    assert!(
        !merged.contains("SECRET-SUITE"),
        "the merged JUnit file holds the file outside the grant (links planted: {planted:?}):\n{merged}"
    );
    assert!(
        merged.contains("honest"),
        "the honest report is merged:\n{merged}"
    );
    for link in planted {
        assert!(
            out.stderr.contains(link) && out.stderr.to_lowercase().contains("warn"),
            "no warning naming the report {link}:\n{}",
            tail(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET_XML);
}

#[test]
fn one_huge_log_message_is_truncated() {
    let env = Env::new();
    let calls = Calls::new().call("big", "log.huge", &[("bytes", &(20u64 << 20).to_string())]);
    let out = run(&mut exec(&env, &calls)).expect_code(0);
    assert_eq!(out.answer("big"), "ok");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("huge-start"))
        .unwrap_or_else(|| panic!("the message is not logged at all:\n{}", tail(&out.stderr)));
    assert!(
        line.contains("truncated"),
        "the message is not marked truncated ({} bytes in its line)",
        line.len()
    );
    assert!(
        out.stderr.len() < 2 << 20,
        "runner's stderr is {} bytes for one log call",
        out.stderr.len()
    );
}

#[test]
fn a_flood_of_log_lines_is_capped_per_run() {
    flood_is_capped("log.lines");
}

/// What a plugin prints is log text too: stdout and stderr share the bound.
#[test]
fn a_flood_of_printed_lines_is_capped_per_run() {
    flood_is_capped("print.lines");
}

fn flood_is_capped(op: &str) {
    let env = Env::new();
    let n = 200_000u64;
    let calls = Calls::new().call("many", op, &[("n", &n.to_string())]);
    let out = run(&mut exec(&env, &calls)).expect_code(0);
    assert_eq!(out.answer("many"), "ok");
    let logged = out
        .stderr
        .lines()
        .filter(|l| l.contains("spam line"))
        .count();
    assert!(
        logged < (n / 2) as usize,
        "{logged} of {n} lines reached runner's stderr ({} bytes)",
        out.stderr.len()
    );
    assert!(
        !out.stderr.contains(&format!("spam line {}", n - 1)),
        "the last line got through"
    );
    let lower = out.stderr.to_lowercase();
    assert!(
        ["truncated", "dropped", "suppressed", "limit"]
            .iter()
            .any(|m| lower.contains(m)),
        "no marker says lines were dropped:\n{}",
        tail(&out.stderr)
    );
    assert!(
        out.stderr.len() < 4 << 20,
        "runner's stderr is {} bytes",
        out.stderr.len()
    );
}
