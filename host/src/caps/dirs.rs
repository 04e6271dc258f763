//! `dirs`: WASI file access, limited to the directories preopened for the
//! run (`--allow-dir HOST[:GUEST][:ro|rw]`). wasmtime-wasi serves the
//! `wasi:filesystem` interfaces; this capability only says which directories
//! it sees, and where the plugin's paths lie on the host.

use super::template::{FileError, GrantedDir};
use super::{Capability, GrantSpec, Grants, RunContext, ValidateContext};
use crate::grants::{GrantError, InvalidGrant};
use std::path::{Path, PathBuf};
use wasmtime::component::Linker;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// `--allow-dir` as written.
#[derive(clap::Args, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DirsSpec {
    /// Preopen a directory for the plugin's file access: HOST[:GUEST][:ro|rw] (default ro).
    #[arg(long = "allow-dir", value_name = "HOST[:GUEST][:MODE]")]
    #[serde(default)]
    pub dirs: Vec<String>,
}

impl GrantSpec for DirsSpec {
    fn merge(&mut self, other: Self) {
        self.dirs.extend(other.dirs);
    }

    fn rebase(&mut self, base: &Path) {
        for d in &mut self.dirs {
            if let Some(host) = d.split(':').next().filter(|h| Path::new(h).is_relative()) {
                *d = format!("{}{}", base.join(host).display(), &d[host.len()..]);
            }
        }
    }
}

/// A directory preopened into the guest's WASI filesystem.
#[derive(Debug, Clone)]
pub struct DirGrant {
    pub granted: GrantedDir,
    /// The path the guest sees.
    pub guest: String,
    pub writable: bool,
}

impl DirGrant {
    /// Where the guest path `guest` lies on the host, if inside this grant.
    pub fn host_path(&self, guest: &str) -> Option<PathBuf> {
        Path::new(guest)
            .strip_prefix(&self.guest)
            .ok()
            .map(|rest| self.granted.path().join(rest))
    }
}

/// The validated `--allow-dir` grants.
#[derive(Debug, Clone, Default)]
pub struct DirsGrant(pub Vec<DirGrant>);

impl DirsGrant {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, DirGrant> {
        self.0.iter()
    }

    /// Where the guest path `guest` lies on the host, through any grant.
    pub fn host_path(&self, guest: &str) -> Option<PathBuf> {
        self.0.iter().find_map(|d| d.host_path(guest))
    }

    /// The granted directories, whatever their mode.
    pub fn granted(&self) -> Vec<GrantedDir> {
        self.0.iter().map(|d| d.granted.clone()).collect()
    }
}

/// A granted directory that cannot be preopened for a run.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("cannot open granted directory: {0}")]
    Root(#[from] FileError),
    #[error("cannot open granted directory {}: {reason}", path.display())]
    Preopen { path: PathBuf, reason: String },
}

/// One run's directories.
pub struct DirsCap {
    dirs: Vec<DirGrant>,
}

impl Capability for DirsCap {
    const INTERFACES: &'static [&'static str] = &["wasi:filesystem/"];
    const FLAG_HINT: &'static str = "--allow-dir HOST[:GUEST][:MODE] (no directories otherwise)";
    type Spec = DirsSpec;
    type Grant = DirsGrant;

    fn validate(spec: &DirsSpec, cx: &mut ValidateContext<'_>) -> Result<DirsGrant, GrantError> {
        spec.dirs
            .iter()
            .map(|d| parse_dir(d, cx).map_err(|r| GrantError::invalid("--allow-dir", d, r)))
            .collect::<Result<_, _>>()
            .map(DirsGrant)
    }

    fn granted(grants: &Grants) -> bool {
        !grants.dirs.is_empty()
    }

    fn prepare(cx: &RunContext<'_>) -> Self {
        Self {
            dirs: cx.grants.dirs.0.clone(),
        }
    }

    fn add_to_linker<T: Send + 'static>(
        _linker: &mut Linker<T>,
        _get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()> {
        // wasmtime-wasi's filesystem is linked with the rest of WASI.
        Ok(())
    }

    /// Preopen each granted directory, re-checking that it is still the
    /// directory that was granted (not swapped for a symlink since).
    fn configure_wasi(&self, wasi: &mut WasiCtxBuilder) -> Result<(), DirError> {
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            dir.granted.check_root()?;
            wasi.preopened_dir(dir.granted.path(), &dir.guest, perms)
                .map_err(|e| DirError::Preopen {
                    path: dir.granted.path().to_path_buf(),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }
}

/// `HOST[:GUEST][:ro|rw]`; the guest path defaults to the host path, the mode to ro.
fn parse_dir(spec: &str, cx: &mut ValidateContext<'_>) -> Result<DirGrant, InvalidGrant> {
    let mut parts: Vec<&str> = spec.split(':').collect();
    let writable = match parts.last() {
        Some(&"rw") => {
            parts.pop();
            true
        }
        Some(&"ro") => {
            parts.pop();
            false
        }
        _ => false,
    };
    let (host, guest) = match parts.as_slice() {
        [host] => (*host, None),
        [host, guest] => (*host, Some(*guest)),
        _ => return Err("expected HOST[:GUEST][:ro|rw], e.g. ./reports:/reports:rw".into()),
    };
    let granted = cx.existing_dir(Path::new(host))?;
    let guest = guest
        .map(str::to_string)
        .unwrap_or_else(|| granted.path().display().to_string());
    if !guest.starts_with('/') {
        return Err(format!("guest path \"{guest}\" must be absolute, e.g. /reports").into());
    }
    Ok(DirGrant {
        granted,
        guest,
        writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_specs_parse_modes_and_guest_paths() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().display().to_string();
        let mut cx = ValidateContext::new(&[], &[]);
        let g = parse_dir(&format!("{host}:/reports:rw"), &mut cx).unwrap();
        assert_eq!((g.guest.as_str(), g.writable), ("/reports", true));
        let g = parse_dir(&host, &mut cx).unwrap();
        assert_eq!(
            (g.guest, g.writable),
            (d.path().display().to_string(), false)
        );
        assert!(
            parse_dir(&format!("{host}:rel"), &mut cx)
                .unwrap_err()
                .0
                .contains("absolute")
        );
        // A directory a later step creates: allowed, and reported.
        let g = parse_dir("/does/not/exist:/out:rw", &mut cx).unwrap();
        assert_eq!(g.guest, "/out");
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(
            parse_dir(&file.display().to_string(), &mut cx)
                .unwrap_err()
                .0
                .contains("not a directory")
        );
        assert_eq!(cx.into_missing_dirs(), [PathBuf::from("/does/not/exist")]);
    }
}
