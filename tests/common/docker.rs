//! Gating the tests that need a Docker engine: without one they skip with a
//! message saying why, except under CI (`CI` set), which has an engine and
//! must run them all, so there a missing engine fails the test instead.

use std::io::Write;
use std::sync::OnceLock;

/// Whether a Docker engine answers (`docker info`, which honours
/// `DOCKER_HOST`); asked once per test process.
pub fn available() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        std::process::Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// True when the calling test may go on; false (after saying so on the
/// terminal) when it should return because no engine answers. Panics under
/// CI instead of skipping. Use through [`require_docker!`].
pub fn require() -> bool {
    available() || skip("no Docker engine answers (set DOCKER_HOST)")
}

/// Skip the calling test, saying `why` on the terminal, and return false;
/// under CI, which must run every test, fail it instead.
pub fn skip(why: &str) -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    assert!(!ci, "{test}: {why}, and CI runs every test");
    // Straight to the terminal: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {why}");
    false
}

/// At the top of a test that needs a Docker engine: returns from the test
/// (skipped, with a message) when none answers; under CI, fails it.
macro_rules! require_docker {
    () => {
        if !$crate::common::docker::require() {
            return;
        }
    };
}
pub(crate) use require_docker;
