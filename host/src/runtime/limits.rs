//! Per-run limits: memory, wall-clock deadline, host-call timeout.

use std::time::Duration;
use wasmtime::ResourceLimiter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest size of any one linear memory of the plugin.
    pub memory_bytes: u64,
    /// Wall-clock time the whole run may take.
    pub deadline: Duration,
    /// Time any one awaited host call (registry, HTTP) may take.
    pub host_call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 * 1024 * 1024,
            deadline: Duration::from_secs(600),
            host_call_timeout: Duration::from_secs(30),
        }
    }
}

/// Returned from a refused memory growth so the fault can be told apart from
/// any other trap, whatever the guest's allocator does next.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded: growing to {desired} bytes, limit {limit} bytes")]
pub struct MemoryLimitExceeded {
    pub desired: usize,
    pub limit: u64,
}

/// Enforces the memory limit and remembers whether it was hit.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limit {
            self.exceeded = true;
            return Err(MemoryLimitExceeded {
                desired,
                limit: self.limit,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far past any real plugin.
        Ok(desired <= 1_000_000)
    }
}
