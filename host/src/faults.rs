//! Deterministic crash points for the crash-recovery tests.
//!
//! `RUNNER_TEST_CRASH_AT=POINT` makes runner kill itself with SIGKILL when it
//! reaches `POINT`: no destructor, no lock release, no journal clear runs, as
//! after `kill -9`, an OOM kill or a power cut. Points are journal steps
//! (`health`, `switch`, ...: killed with the intent written, before its
//! effect), `STEP:done` (killed after the step's effect, before the next
//! entry), and the proxy switch's own steps (`proxy:staged`, `proxy:linked`,
//! `proxy:live`, `proxy:checked`, `proxy:reloaded`). Unset, this is one environment lookup.

/// The variable naming the crash point.
pub const CRASH_AT: &str = "RUNNER_TEST_CRASH_AT";

/// Die here if the tests asked for it.
pub fn crash_point(point: &str) {
    if std::env::var_os(CRASH_AT).is_some_and(|target| target == point) {
        tracing::warn!("{CRASH_AT}={point}: killing runner here (crash test)");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
