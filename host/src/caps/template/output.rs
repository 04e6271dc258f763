//! Files a template reads and writes, confined to granted directories with
//! cap-std: `..` and symlinks that lead outside a grant are refused by the
//! filesystem layer itself, not by string checks alone.

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("path \"{0}\" contains `..`; give a path inside the granted directory")]
    ParentComponent(PathBuf),
    #[error("path \"{path}\" is outside every granted directory ({granted})")]
    NotGranted { path: PathBuf, granted: String },
    #[error("path \"{0}\" leads outside the granted directory (through a symlink)")]
    Escapes(PathBuf),
    #[error("path \"{0}\" does not exist")]
    NotFound(PathBuf),
    #[error("file \"{path}\" is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A directory the plugin was granted, opened once with cap-std.
#[derive(Debug, Clone)]
pub struct GrantedDir {
    /// The grant as an absolute path (not symlink-resolved: what users type).
    root: PathBuf,
    /// The grant with symlinks resolved, so paths given either way match.
    canonical: PathBuf,
}

impl GrantedDir {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let root = std::path::absolute(root)?;
        let canonical = root.canonicalize()?;
        Ok(Self { root, canonical })
    }

    /// A directory that does not exist yet (a later step creates it): it
    /// matches by the path as given, with the nearest existing ancestor's
    /// symlinks resolved; opening it fails until it exists.
    pub fn not_yet_created(root: &Path) -> std::io::Result<Self> {
        let root = std::path::absolute(root)?;
        let mut existing = root.as_path();
        let mut rest = Vec::new();
        while !existing.exists() {
            let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
                break;
            };
            rest.push(name);
            existing = parent;
        }
        let mut canonical = existing.canonicalize().unwrap_or_else(|_| existing.into());
        canonical.extend(rest.iter().rev());
        Ok(Self { root, canonical })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Check the grant's root still resolves to the directory granted: a
    /// directory that did not exist when the grant was given, or was
    /// replaced since, may now be a symlink leading elsewhere.
    pub fn check_root(&self) -> Result<(), FileError> {
        let now = self
            .root
            .canonicalize()
            .map_err(|e| io_error(&self.root, e))?;
        if now == self.canonical {
            Ok(())
        } else {
            Err(FileError::Escapes(self.root.clone()))
        }
    }

    /// Open the grant's root, after `check_root`.
    fn open_root(&self) -> Result<Dir, FileError> {
        self.check_root()?;
        Dir::open_ambient_dir(&self.root, ambient_authority()).map_err(|e| io_error(&self.root, e))
    }

    /// Whether both name the same directory.
    pub fn same_dir(&self, other: &GrantedDir) -> bool {
        self.canonical == other.canonical
    }

    /// Whether `path` (absolute or relative to the working directory, as
    /// given) names something inside this directory.
    pub fn holds(&self, path: &Path) -> bool {
        std::path::absolute(path)
            .ok()
            .and_then(|abs| self.relative(&abs).map(|rel| !rel.as_os_str().is_empty()))
            .unwrap_or(false)
    }

    /// Whether the symlink-resolved `path` lies inside this directory.
    pub fn contains(&self, canonical: &Path) -> bool {
        canonical.starts_with(&self.canonical)
    }

    fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.root)
            .or_else(|_| path.strip_prefix(&self.canonical))
            .ok()
    }
}

fn list(dirs: &[GrantedDir]) -> String {
    if dirs.is_empty() {
        "none granted".into()
    } else {
        dirs.iter()
            .map(|d| d.root.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn io_error(path: &Path, e: std::io::Error) -> FileError {
    // cap-std reports an escape as PermissionDenied ("a path led outside of the filesystem").
    match e.kind() {
        std::io::ErrorKind::PermissionDenied if e.to_string().contains("outside") => {
            FileError::Escapes(path.into())
        }
        std::io::ErrorKind::NotFound => FileError::NotFound(path.into()),
        _ => FileError::Io {
            path: path.into(),
            source: e,
        },
    }
}

/// Resolve `path` to (open grant dir, path relative to it).
fn locate(dirs: &[GrantedDir], path: &Path) -> Result<(Dir, PathBuf), FileError> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(FileError::ParentComponent(path.into()));
    }
    let abs = std::path::absolute(path).map_err(|e| io_error(path, e))?;
    for dir in dirs {
        if let Some(rel) = dir.relative(&abs) {
            if rel.as_os_str().is_empty() {
                continue;
            }
            let handle = dir.open_root()?;
            return Ok((handle, rel.to_path_buf()));
        }
    }
    Err(FileError::NotGranted {
        path: path.into(),
        granted: list(dirs),
    })
}

/// Open the directory `path` inside one of `dirs` (the grant's root itself
/// included), through cap-std: no `..`, no symlink out of the grant.
pub fn open_dir_inside(dirs: &[GrantedDir], path: &Path) -> Result<Dir, FileError> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(FileError::ParentComponent(path.into()));
    }
    let abs = std::path::absolute(path).map_err(|e| io_error(path, e))?;
    for dir in dirs {
        if let Some(rel) = dir.relative(&abs) {
            let root = dir.open_root()?;
            if rel.as_os_str().is_empty() {
                return Ok(root);
            }
            return root.open_dir(rel).map_err(|e| io_error(path, e));
        }
    }
    Err(FileError::NotGranted {
        path: path.into(),
        granted: list(dirs),
    })
}

/// Read a file inside one of `dirs`, refusing a file larger than `max` bytes (a plugin
/// decides what the host reads on its behalf, so the host bounds it).
pub fn read_inside_limited(
    dirs: &[GrantedDir],
    path: &Path,
    max: u64,
) -> Result<String, FileError> {
    use std::io::Read;
    let (dir, rel) = locate(dirs, path)?;
    let file = dir.open(&rel).map_err(|e| io_error(path, e))?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| io_error(path, e))?;
    if text.len() as u64 > max {
        return Err(FileError::TooLarge {
            path: path.into(),
            max,
        });
    }
    Ok(text)
}

/// Write `content` to `path` inside one of `dirs`, atomically (temp file,
/// fsync, rename) and only when it differs. Returns whether it changed.
pub fn write_if_changed(
    dirs: &[GrantedDir],
    path: &Path,
    content: &[u8],
) -> Result<bool, FileError> {
    let (dir, rel) = locate(dirs, path)?;
    match dir.read(&rel) {
        Ok(existing) if existing == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, e)),
    }
    // A re-render keeps the file's permission bits, as consul-template does
    // (a 0640 secret stays 0640); never setuid, setgid or sticky, which on a
    // file with rendered content would be an escalation.
    let kept_mode = dir
        .symlink_metadata(&rel)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| {
            use cap_std::fs::PermissionsExt;
            m.permissions().mode() & 0o777
        });
    let file_name = rel
        .file_name()
        .ok_or_else(|| FileError::ParentComponent(path.into()))?
        .to_string_lossy()
        .into_owned();
    let parent = rel.parent().unwrap_or(Path::new(""));
    let tmp = parent.join(format!(".{file_name}.runner-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = dir.create(&tmp)?;
        if let Some(mode) = kept_mode {
            use cap_std::fs::PermissionsExt;
            file.set_permissions(cap_std::fs::Permissions::from_mode(mode))?;
        }
        file.write_all(content)?;
        file.sync_all()?;
        // rename replaces a symlink at `rel` itself, never writes through it.
        dir.rename(&tmp, &dir, &rel)?;
        let parent_dir = if parent.as_os_str().is_empty() {
            dir.try_clone()?
        } else {
            dir.open_dir(parent)?
        };
        // Persist the rename itself.
        parent_dir.open(".")?.sync_all()
    };
    write().map_err(|e| {
        let _ = dir.remove_file(&tmp);
        io_error(path, e)
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(d: &Path) -> Vec<GrantedDir> {
        vec![GrantedDir::new(d).unwrap()]
    }

    #[test]
    fn a_rerender_keeps_the_files_mode_but_never_setuid() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dirs = granted(d.path());
        let target = d.path().join("secret.env");
        assert!(write_if_changed(&dirs, &target, b"a").unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(write_if_changed(&dirs, &target, b"b").unwrap());
        assert_eq!(mode(&target), 0o640);
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(write_if_changed(&dirs, &target, b"c").unwrap());
        assert_eq!(mode(&target), 0o755, "the setuid bit is not carried over");
    }

    #[test]
    fn writes_atomically_and_only_on_change() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let dirs = granted(d.path());
        let target = d.path().join("sub/up.conf");
        assert!(write_if_changed(&dirs, &target, b"a").unwrap());
        let before = std::fs::metadata(&target).unwrap().modified().unwrap();
        assert!(!write_if_changed(&dirs, &target, b"a").unwrap());
        assert_eq!(
            std::fs::metadata(&target).unwrap().modified().unwrap(),
            before
        );
        assert!(write_if_changed(&dirs, &target, b"b").unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"b");
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn parent_components_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let err =
            write_if_changed(&granted(d.path()), &d.path().join("../x.conf"), b"a").unwrap_err();
        assert!(matches!(err, FileError::ParentComponent(_)), "{err}");
        assert!(!d.path().parent().unwrap().join("x.conf").exists());
    }

    #[test]
    fn symlinked_directory_leading_out_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).unwrap();
        let err =
            write_if_changed(&granted(d.path()), &d.path().join("link/x.conf"), b"a").unwrap_err();
        assert!(matches!(err, FileError::Escapes(_)), "{err}");
        assert!(!outside.path().join("x.conf").exists());
    }

    #[test]
    fn symlinked_file_is_replaced_not_written_through() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, d.path().join("out.conf")).unwrap();
        let result = write_if_changed(&granted(d.path()), &d.path().join("out.conf"), b"new");
        assert!(matches!(result, Err(FileError::Escapes(_))), "{result:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn a_grant_that_became_a_symlink_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let later = d.path().join("later");
        let g = GrantedDir::not_yet_created(&later).unwrap();
        // Created after the grant was given, as a symlink leading out.
        std::os::unix::fs::symlink(outside.path(), &later).unwrap();
        let err =
            write_if_changed(std::slice::from_ref(&g), &later.join("x.conf"), b"a").unwrap_err();
        assert!(matches!(err, FileError::Escapes(_)), "{err}");
        assert!(open_dir_inside(std::slice::from_ref(&g), &later).is_err());
        assert!(!outside.path().join("x.conf").exists());
        // Created as a real directory: usable.
        std::fs::remove_file(&later).unwrap();
        std::fs::create_dir(&later).unwrap();
        assert!(write_if_changed(&[g], &later.join("x.conf"), b"a").unwrap());
    }

    #[test]
    fn paths_outside_every_grant_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let err = write_if_changed(&granted(d.path()), &other.path().join("x"), b"a").unwrap_err();
        assert!(matches!(err, FileError::NotGranted { .. }), "{err}");
    }
}
