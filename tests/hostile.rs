//! The hostile-plugin suite: components written as an attacker would, run
//! against the real host. Every test asserts that runner survives (exit
//! status, message) and that nothing outside the grant changed.
//!
//! One file per class of attack, under `tests/hostile/`.

mod common;

#[path = "hostile/deploys.rs"]
mod deploys;
#[path = "hostile/docker.rs"]
mod docker;
#[path = "hostile/files.rs"]
mod files;
#[path = "hostile/limits.rs"]
mod limits;
#[path = "hostile/registry.rs"]
mod registry;
#[path = "hostile/templates.rs"]
mod templates;
