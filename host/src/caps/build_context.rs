//! A Docker build context, packed from a granted directory through cap-std.
//!
//! The plugin names the directory; the host reads it on the plugin's behalf,
//! so the walk goes through the same capability-safe opener as templates and
//! reports: every open is relative to the granted directory, symlinks go in
//! as links (never followed, so a context cannot smuggle in files from
//! outside), FIFOs and devices are skipped, and the archive is bounded.

use cap_std::fs::Dir;
use std::io::Read;
use std::path::Path;

/// Largest build context packed (it is held in memory to send to the engine).
pub const MAX_CONTEXT_BYTES: u64 = 512 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the context is larger than {} (its files together); build from a directory holding only what the image needs", crate::runtime::format_bytes(*.0))]
    TooLarge(u64),
}

/// Pack `dir` (already opened inside a grant) as a tar archive.
pub fn pack(dir: &Dir, max: u64) -> Result<Vec<u8>, ContextError> {
    let mut archive = tar::Builder::new(Vec::new());
    let mut left = max;
    append_dir(&mut archive, dir, Path::new(""), &mut left)?;
    Ok(archive.into_inner()?)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header
}

fn append_dir(
    archive: &mut tar::Builder<Vec<u8>>,
    dir: &Dir,
    prefix: &Path,
    left: &mut u64,
) -> Result<(), ContextError> {
    use cap_std::fs::PermissionsExt;
    let mut entries = dir.entries()?.collect::<Result<Vec<_>, _>>()?;
    // A stable order makes the same context the same archive.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let path = prefix.join(&name);
        // Not followed: the entry itself.
        let meta = dir.symlink_metadata(&name)?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0, mode);
            archive.append_data(&mut h, &path, std::io::empty())?;
            // cap-std refuses any resolution that leaves `dir`, even if the entry
            // was swapped for a symlink since it was listed.
            let sub = dir.open_dir(&name)?;
            append_dir(archive, &sub, &path, left)?;
        } else if kind.is_symlink() {
            // The link's text, absolute or not: it is archived, never followed.
            let target = dir.read_link_contents(&name)?;
            let mut h = header(tar::EntryType::Symlink, 0, 0o777);
            archive.append_link(&mut h, &path, &target)?;
        } else if kind.is_file() {
            let size = meta.len();
            if size > *left {
                return Err(ContextError::TooLarge(*left));
            }
            *left -= size;
            let file = dir.open(&name)?;
            let mut h = header(tar::EntryType::Regular, size, mode);
            archive.append_data(&mut h, &path, file.take(size))?;
        }
        // FIFOs, sockets and devices have no place in a build context.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    fn names(archive: &[u8]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let link = entry
                .link_name()
                .unwrap()
                .map(|l| format!("-> {}", l.display()))
                .unwrap_or_default();
            let mut body = String::new();
            entry.read_to_string(&mut body).ok();
            out.push((path, format!("{link}{body}")));
        }
        out
    }

    #[test]
    fn links_stay_links_and_the_size_is_bounded() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s3cret").unwrap();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(ctx.path().join("app")).unwrap();
        std::fs::write(ctx.path().join("app/bin"), "x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), ctx.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../secret", ctx.path().join("app/rel")).unwrap();
        let dir = Dir::open_ambient_dir(ctx.path(), ambient_authority()).unwrap();
        let archive = pack(&dir, 1024).unwrap();
        let entries = names(&archive);
        let all = format!("{entries:?}");
        assert!(!all.contains("s3cret"), "{all}");
        assert!(
            entries.contains(&("Dockerfile".into(), "FROM scratch\n".into())),
            "{all}"
        );
        assert!(
            entries
                .iter()
                .any(|(p, l)| p == "abs" && l.starts_with("-> ")),
            "{all}"
        );
        assert!(entries.iter().any(|(p, _)| p == "app/bin"), "{all}");
        assert!(matches!(pack(&dir, 5), Err(ContextError::TooLarge(_))));
    }
}
