//! The embedded store's identity: a hash of its state directory's canonical
//! path, the same however the directory is spelled.

use std::path::{Path, PathBuf};

/// The registry identity of the embedded store in `state_dir`:
/// `embedded:` and a hash of the directory's canonical path, so every
/// spelling of one directory (relative, through a symlink, before or after it
/// exists) names the same store, and the label carries no path.
pub(crate) fn identity(state_dir: &Path) -> String {
    let path = canonical(state_dir);
    let hash = blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex();
    format!("embedded:{}", &hash[..16])
}

/// `path` made absolute with its longest existing ancestor resolved
/// (symlinks, `..`) and the rest, not yet created, appended as given: the
/// same answer before the directory exists as after.
fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut current = absolute.as_path();
    loop {
        if let Ok(resolved) = current.canonicalize() {
            return missing
                .iter()
                .rev()
                .fold(resolved, |path, name| path.join(name));
        }
        match (current.parent(), current.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                current = parent;
            }
            // Nothing of it resolves (`..` past a missing directory): as given.
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use std::time::Duration;

    /// One state directory has one identity however it is named, before and
    /// after it exists; another directory has another.
    #[test]
    fn identity_follows_the_canonical_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let before = identity(&state);
        assert!(before.starts_with("embedded:"), "{before}");
        assert_eq!(before.len(), "embedded:".len() + 16, "{before}");
        let reg = super::super::EmbeddedRegistry::open(&state, Duration::from_secs(5)).unwrap();
        assert_eq!(reg.identity(), before, "the same before and after creation");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        assert_eq!(identity(&link), before, "through a symlink");
        std::fs::create_dir(dir.path().join("x")).unwrap();
        assert_eq!(identity(&dir.path().join("x/../state")), before, "with ..");
        assert_eq!(
            crate::registry::LazyRegistry::new(state.clone(), Duration::from_secs(5)).identity(),
            before,
            "the lazy store, unopened"
        );
        assert_ne!(identity(&dir.path().join("other")), before);
    }
}
