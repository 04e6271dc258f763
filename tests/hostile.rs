//! The hostile-plugin suite: components written as an attacker would, run
//! against the real host. Every test asserts that runner survives (exit
//! status, message) and that nothing outside the grant changed.
//!
//! One file per class of attack, under `tests/hostile/`.

mod deploys;
mod docker;
mod files;
mod limits;
mod registry;
mod templates;
