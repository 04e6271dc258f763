//! Where the tests find what the build made: the plugins and the repository.
//! Plain `std`, so `host/benches/runtime.rs` includes this file too
//! (`#[path]`) rather than keeping a copy.

use std::path::{Path, PathBuf};

/// The cargo target directory (the parent of `CARGO_TARGET_TMPDIR`).
pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

/// `<cargo target dir>/plugins/NAME.wasm`, built by `scripts/build-plugins`.
pub fn plugin(name: &str) -> PathBuf {
    let path = target_dir().join("plugins").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first with scripts/build-plugins",
        path.display()
    );
    path
}

/// The repository's root directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}
