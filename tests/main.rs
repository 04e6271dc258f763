//! The end-to-end tests, one binary with a module per area (ripgrep's and
//! cargo's layout): each runs the real `runner` binary on real plugins, and
//! the areas that need a Docker engine skip with a message when none
//! answers (see `common::docker`). Run one area with
//! `cargo test --test e2e AREA::`, e.g. `cargo test --test e2e recovery::`.
//!
//! Tests of different areas run at the same time in this one process: every
//! name a test gives something outside its temp dir (services, containers,
//! images, ports) comes from `common::unique` or `common::free_port`.

mod common;

mod bluegreen;
mod cache;
mod ci_image;
mod consul;
mod contract_version;
mod describe;
mod engines;
mod faults;
mod fleet;
mod hostile;
mod images;
mod locks;
mod oci;
mod pipeline;
mod plugins;
mod reconcile;
mod recovery;
mod registry;
mod replicas;
mod sandbox;
mod scaffold;
mod signatures;
mod swarm;
mod template_oracle;
mod template_watch;
