//! Per-run limits: memory (all memories and tables of the run together),
//! counts of core instances, memories and tables, wall-clock deadline,
//! host-call timeout.

use std::time::Duration;
use wasmtime::ResourceLimiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of all linear memories and tables of the run together (`--memory`).
    pub memory_bytes: u64,
    /// Wall-clock time the whole run may take.
    pub deadline: Duration,
    /// Time any one awaited host call (registry, HTTP) may take.
    pub host_call_timeout: Duration,
    /// Largest HTTP response body the plugin may receive.
    pub http_max_body: u64,
}

/// The default of `--http-max-body` and `limits.http_max_body`.
pub const DEFAULT_HTTP_MAX_BODY: u64 = 10 * 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * 1024 * 1024,
            deadline: Duration::from_secs(600),
            host_call_timeout: Duration::from_secs(30),
            http_max_body: DEFAULT_HTTP_MAX_BODY,
        }
    }
}

/// What one table element is charged against `--memory`. Wasmtime stores a
/// funcref as a pointer (8 bytes) and a continuation reference as a pointer
/// plus a revision (16 bytes), the largest element it has; charging every
/// element 16 bytes never undercounts.
pub const TABLE_ELEMENT_BYTES: u64 = 16;

/// Fixed caps on what one run may create, far above what real plugins use
/// (measured: a componentize-py component, which links CPython, libc and
/// its adapters as separate core modules, instantiates 14 core modules with
/// 1 memory and 2 tables; the Rust plugins fewer). 16 memories leaves room
/// for components that merge several wasm programs, each with its memory. They are not flags: a
/// component that needs more is not a stage runner can run, and each of
/// these costs the host memory the byte count above does not see (an
/// instance's vmctx, a memory's guard reservation).
pub const MAX_INSTANCES: usize = 100;
pub const MAX_MEMORIES: usize = 16;
pub const MAX_TABLES: usize = 32;

/// Returned from a refused memory or table growth so the fault can be told
/// apart from any other trap, whatever the guest's allocator does next.
#[derive(Debug, thiserror::Error)]
#[error(
    "memory limit exceeded: the run's memories and tables would use {desired} bytes, limit {limit} bytes"
)]
pub struct MemoryLimitExceeded {
    pub desired: u64,
    pub limit: u64,
}

/// Counts every linear memory and table of one run (one store) against one
/// budget, and remembers whether it was hit.
///
/// Wasmtime calls the limiter with `current == 0` when a memory or table is
/// created and with the old and new sizes when it grows; neither ever
/// shrinks during a store's life, so the sum of the deltas is what the run
/// holds. A growth that fails after being allowed here stays counted, which
/// only errs on the safe side.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    used: u64,
    pub(crate) exceeded: bool,
    /// Memories and tables created, for the debug log (the caps themselves
    /// are enforced by wasmtime through `memories()` and `tables()`).
    pub(crate) memories_created: usize,
    pub(crate) tables_created: usize,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            exceeded: false,
            memories_created: 0,
            tables_created: 0,
        }
    }

    /// Bytes of memories and tables the run holds.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn charge(&mut self, current: u64, desired: u64) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.exceeded = true;
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.limit,
            }
            .into());
        }
        self.used = total;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if current == 0 {
            self.memories_created += 1;
        }
        // Past the memory's own maximum wasmtime refuses the growth anyway
        // (`memory.grow` returns -1); refuse it here so it is not counted.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.charge(current as u64, desired as u64)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if current == 0 {
            self.tables_created += 1;
        }
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let bytes = |elements: usize| (elements as u64).saturating_mul(TABLE_ELEMENT_BYTES);
        self.charge(bytes(current), bytes(desired))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Which fixed cap a run hit, from wasmtime's error ("resource limit
/// exceeded: memory count too high at 17"), which is all wasmtime reports: it
/// checks the counts itself and never calls the limiter for them. The unit
/// tests below pin the wording, so a wasmtime upgrade that changes it fails
/// there rather than turning these faults into anonymous traps.
pub(crate) fn count_cap_hit(message: &str) -> Option<(&'static str, usize)> {
    let rest = message.split("resource limit exceeded: ").nth(1)?;
    let kind = rest.split(" count too high").next()?;
    match kind {
        "instance" => Some(("core instances", MAX_INSTANCES)),
        "memory" => Some(("linear memories", MAX_MEMORIES)),
        "table" => Some(("tables", MAX_TABLES)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memories_count_together_not_each() {
        let mut limiter = MemoryLimiter::new(64 * MIB as u64);
        for _ in 0..3 {
            assert!(limiter.memory_growing(0, 20 * MIB, None).unwrap());
        }
        assert_eq!(limiter.used(), 60 * MIB as u64);
        let err = limiter.memory_growing(0, 20 * MIB, None).unwrap_err();
        assert!(err.downcast_ref::<MemoryLimitExceeded>().is_some());
        assert!(limiter.exceeded);
    }

    #[test]
    fn growth_is_charged_by_its_delta() {
        let mut limiter = MemoryLimiter::new(10 * MIB as u64);
        assert!(limiter.memory_growing(0, MIB, None).unwrap());
        assert!(limiter.memory_growing(MIB, 9 * MIB, None).unwrap());
        assert_eq!(limiter.used(), 9 * MIB as u64);
        assert!(limiter.memory_growing(9 * MIB, 11 * MIB, None).is_err());
    }

    #[test]
    fn tables_share_the_budget_with_memories() {
        let mut limiter = MemoryLimiter::new(32 * MIB as u64);
        assert!(limiter.memory_growing(0, 16 * MIB, None).unwrap());
        // 1M elements at 16 bytes is 16 MiB: exactly the rest of the budget.
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(limiter.table_growing(10, 1 << 20, None).unwrap());
        assert_eq!(limiter.used(), 32 * MIB as u64);
        assert!(limiter.table_growing(1 << 20, (1 << 20) + 1, None).is_err());
        assert!(limiter.exceeded);
    }

    #[test]
    fn growth_past_the_declared_maximum_is_refused_uncharged() {
        let mut limiter = MemoryLimiter::new(u64::MAX);
        assert!(!limiter.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert!(!limiter.table_growing(0, 20, Some(10)).unwrap());
        assert_eq!(limiter.used(), 0);
    }

    #[test]
    fn wasmtime_count_errors_are_recognised() {
        assert_eq!(
            count_cap_hit("resource limit exceeded: memory count too high at 17"),
            Some(("linear memories", MAX_MEMORIES))
        );
        assert_eq!(
            count_cap_hit("resource limit exceeded: instance count too high at 101"),
            Some(("core instances", MAX_INSTANCES))
        );
        assert_eq!(
            count_cap_hit("resource limit exceeded: table count too high at 33"),
            Some(("tables", MAX_TABLES))
        );
        assert_eq!(count_cap_hit("wasm trap: unreachable"), None);
    }

    /// The wording `count_cap_hit` relies on, from wasmtime itself.
    #[test]
    fn wasmtime_reports_count_caps_in_the_expected_words() {
        let engine = wasmtime::Engine::default();
        let text = format!("(module {})", "(memory 1) ".repeat(MAX_MEMORIES + 1));
        let module = wasmtime::Module::new(&engine, text);
        let module = match module {
            Ok(m) => m,
            Err(e) => panic!("multi-memory module: {e}"),
        };
        let mut store = wasmtime::Store::new(&engine, MemoryLimiter::new(u64::MAX));
        store.limiter(|l| l);
        let err = wasmtime::Instance::new(&mut store, &module, &[]).unwrap_err();
        assert_eq!(
            count_cap_hit(&format!("{err:#}")),
            Some(("linear memories", MAX_MEMORIES)),
            "{err:#}"
        );
    }
}
