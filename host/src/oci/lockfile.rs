//! `runner.lock`, beside the pipeline file: every registry reference the
//! pipeline (and its hooks) names, pinned to the manifest digest it
//! resolved to, with the component's layer digest and the imports
//! (capabilities) it uses. `runner run` uses the pinned digest even when
//! the tag has moved; `runner plugin lock` and `update` write it.

use super::{Digest, OciError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "runner.lock";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LockFile {
    pub version: u32,
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockEntry {
    /// As the pipeline writes it (`oci://127.0.0.1:5000/team/notify:1.2`).
    pub reference: String,
    /// The manifest digest the reference resolved to.
    pub digest: Digest,
    /// The component's layer digest.
    pub layer: Digest,
    /// What the component imports: the capabilities it can ask for.
    pub imports: Vec<String>,
}

const HEADER: &str = "# runner.lock: the plugins this pipeline runs, pinned by digest.\n\
# Written by `runner plugin lock` / `runner plugin update`; commit it. `runner run --locked` refuses\n\
# to run when it is missing or does not cover the pipeline.\n\n";

impl LockFile {
    /// The lock beside pipeline file `pipeline`.
    pub fn path_for(pipeline: &Path) -> PathBuf {
        pipeline
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(FILE_NAME)
    }

    /// The lock at `path`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, OciError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(OciError::File {
                    path: path.into(),
                    detail: e.to_string(),
                });
            }
        };
        let lock: Self = toml::from_str(&text).map_err(|e| OciError::File {
            path: path.into(),
            detail: format!(
                "not a valid lock file ({}); regenerate it with `runner plugin lock`",
                e.message()
            ),
        })?;
        if lock.version != 1 {
            return Err(OciError::File {
                path: path.into(),
                detail: format!(
                    "lock file version {} is not one this runner reads (1)",
                    lock.version
                ),
            });
        }
        Ok(Some(lock))
    }

    pub fn write(&self, path: &Path) -> Result<(), OciError> {
        let mut lock = self.clone();
        lock.version = 1;
        lock.plugins.sort_by(|a, b| a.reference.cmp(&b.reference));
        let text = toml::to_string(&lock).map_err(|e| OciError::File {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let io = |e: std::io::Error| OciError::File {
            path: path.into(),
            detail: e.to_string(),
        };
        let temp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        std::fs::write(temp.path(), format!("{HEADER}{text}")).map_err(io)?;
        temp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    pub fn get(&self, reference: &str) -> Option<&LockEntry> {
        self.plugins.iter().find(|e| e.reference == reference)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        assert_eq!(LockFile::read(&path).unwrap(), None);
        let lock = LockFile {
            version: 1,
            plugins: vec![LockEntry {
                reference: "oci://127.0.0.1:5000/team/notify:1.2".into(),
                digest: Digest::of(b"m"),
                layer: Digest::of(b"l"),
                imports: vec!["runner:plugin/log@0.1.0".into()],
            }],
        };
        lock.write(&path).unwrap();
        assert_eq!(LockFile::read(&path).unwrap(), Some(lock));
        std::fs::write(&path, "version = 1\n[[plugin]]\nreference = \"x\"\ndigest = \"sha256:../x\"\nlayer = \"\"\nimports = []\n").unwrap();
        let e = LockFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("runner plugin lock"), "{e}");
    }
}
