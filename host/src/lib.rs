//! runner: a deployment runner whose every pipeline stage is a sandboxed
//! WebAssembly component.
//!
//! Layers, outside in (see ARCHITECTURE.md):
//! - [`cli`] parses the command line (the binary in `main.rs` maps results to exit codes
//!   and shows pipeline runs: the library only sends [`pipeline::report::Event`]s to the
//!   reporter it is handed);
//! - [`runtime`] owns the engine, the precompiled-artifact cache, limits and the
//!   run of one stage; it knows no capability's internals;
//! - [`caps`] holds one module per capability (grant check + host trait impl);
//! - [`registry`] is the KV + catalog backend the `kv`, `catalog` and `template`
//!   capabilities share;
//! - [`grants`] is the default-deny grant model, from flags or TOML;
//! - [`conventions`] names what the host and the stock plugins agree on outside the WIT.

pub mod bindings;
pub mod caps;
pub mod cli;
pub mod commands;
pub mod conventions;
pub mod describe;
pub mod error_chain;
pub mod faults;
pub mod grants;
pub mod inspect;
pub mod names;
pub mod oci;
pub mod pipeline;
pub mod plugin_ref;
pub mod registry;
pub mod runfile;
pub mod runtime;
pub mod scaffold;
pub mod stage;

/// The version of the `runner:plugin` WIT package this runner provides
/// (`wit/world.wit`).
pub const CONTRACT_VERSION: &str = "0.1.4";

#[cfg(test)]
mod contract_tests {
    #[test]
    fn the_contract_version_is_the_wit_packages() {
        let world = include_str!("../../wit/world.wit");
        assert!(
            world.starts_with(&format!(
                "package runner:plugin@{};",
                super::CONTRACT_VERSION
            )),
            "wit/world.wit and CONTRACT_VERSION disagree"
        );
    }
}
