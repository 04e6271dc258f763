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

/// Largest build context packed (it is held in memory to send to the
/// engine), counting each entry's tar header as well as its contents.
pub const MAX_CONTEXT_BYTES: u64 = 512 * 1024 * 1024;
/// Deepest directory nesting packed (the walk recurses once per level).
pub const MAX_CONTEXT_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the context nests directories deeper than {MAX_CONTEXT_DEPTH} levels")]
    TooDeep,
    #[error("the context is larger than {} (its files together); build from a directory holding only what the image needs", crate::runtime::format_bytes(*.0))]
    TooLarge(u64),
}

/// Pack `dir` (already opened inside a grant) as a tar archive of at most
/// `max` bytes.
pub fn pack(dir: &Dir, max: u64) -> Result<Vec<u8>, ContextError> {
    let mut packer = Packer {
        archive: tar::Builder::new(Vec::new()),
        left: max,
        max,
    };
    packer.append_dir(dir, Path::new(""), 0)?;
    Ok(packer.archive.into_inner()?)
}

/// The Dockerfile's text, if the context has one (the engine reports a
/// missing one itself). Bounded: a Dockerfile is small.
pub fn read_dockerfile(dir: &Dir, name: &str) -> Result<Option<String>, ContextError> {
    const MAX_DOCKERFILE: u64 = 1024 * 1024;
    let file = match dir.open(name) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut text = String::new();
    file.take(MAX_DOCKERFILE).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// A base image a Dockerfile names through a build argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "base image \"{0}\" comes from a build argument; name the image itself so its grant can be checked"
)]
pub struct ArgumentImage(pub String);

/// The images a Dockerfile builds from: each `FROM` image and `--from=`
/// image that is not an earlier stage (or `scratch`). A `$` in one is
/// refused: an image chosen by a build argument cannot be checked.
pub fn base_images(dockerfile: &str) -> Result<Vec<String>, ArgumentImage> {
    let joined = dockerfile.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut stages: Vec<String> = Vec::new();
    let mut images = Vec::new();
    let mut add = |image: &str, stages: &[String]| -> Result<(), ArgumentImage> {
        let is_stage =
            stages.iter().any(|s| s.eq_ignore_ascii_case(image)) || image.parse::<usize>().is_ok();
        if is_stage || image.eq_ignore_ascii_case("scratch") {
            return Ok(());
        }
        if image.contains('$') {
            return Err(ArgumentImage(image.to_string()));
        }
        images.push(image.to_string());
        Ok(())
    };
    for line in joined.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        let Some(instruction) = words.next() else {
            continue;
        };
        let words: Vec<&str> = words.collect();
        if instruction.eq_ignore_ascii_case("FROM") {
            let mut rest = words.iter().filter(|w| !w.starts_with("--"));
            if let Some(image) = rest.next() {
                add(image, &stages)?;
            }
            if let (Some(as_), Some(name)) = (rest.next(), rest.next())
                && as_.eq_ignore_ascii_case("AS")
            {
                stages.push(name.to_string());
            }
        }
        // COPY --from=X and RUN --mount=...,from=X read another image too.
        for word in &words {
            let from = word
                .strip_prefix("--from=")
                .or_else(|| word.split(',').find_map(|p| p.strip_prefix("from=")));
            if let Some(image) = from {
                add(image, &stages)?;
            }
        }
    }
    Ok(images)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header
}

struct Packer {
    archive: tar::Builder<Vec<u8>>,
    /// Bytes the archive may still take.
    left: u64,
    max: u64,
}

impl Packer {
    fn charge(&mut self, bytes: u64) -> Result<(), ContextError> {
        self.left = self
            .left
            .checked_sub(bytes)
            .ok_or(ContextError::TooLarge(self.max))?;
        Ok(())
    }

    fn append_dir(&mut self, dir: &Dir, prefix: &Path, depth: usize) -> Result<(), ContextError> {
        use cap_std::fs::PermissionsExt;
        if depth > MAX_CONTEXT_DEPTH {
            return Err(ContextError::TooDeep);
        }
        let mut entries = dir.entries()?.collect::<Result<Vec<_>, _>>()?;
        // A stable order makes the same context the same archive.
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let path = prefix.join(&name);
            // Every entry costs a header (long names more) whatever its size.
            self.charge(512 + path.as_os_str().len() as u64)?;
            // Not followed: the entry itself.
            let meta = dir.symlink_metadata(&name)?;
            let mode = meta.permissions().mode() & 0o7777;
            let kind = meta.file_type();
            if kind.is_dir() {
                let mut h = header(tar::EntryType::Directory, 0, mode);
                self.archive.append_data(&mut h, &path, std::io::empty())?;
                // cap-std refuses any resolution that leaves `dir`, even if the
                // entry was swapped for a symlink since it was listed.
                let sub = dir.open_dir(&name)?;
                self.append_dir(&sub, &path, depth + 1)?;
            } else if kind.is_symlink() {
                // The link's text, absolute or not: archived, never followed.
                let target = dir.read_link_contents(&name)?;
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                self.archive.append_link(&mut h, &path, &target)?;
            } else if kind.is_file() {
                let size = meta.len();
                self.charge(size)?;
                let file = dir.open(&name)?;
                let mut h = header(tar::EntryType::Regular, size, mode);
                self.archive.append_data(&mut h, &path, file.take(size))?;
            }
            // FIFOs, sockets and devices have no place in a build context.
        }
        Ok(())
    }
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
    fn base_images_are_every_image_a_build_reads() {
        let text = "# syntax\nFROM scratch\nFROM --platform=linux/amd64 payments:v3 AS build\n\
                    RUN --mount=type=cache,from=other:v1,target=/x true\n\
                    FROM build\nCOPY --from=build /a /a\nCOPY --from=secret:v9 /b /b\n\
                    COPY --from=0 /c /c\n";
        assert_eq!(
            base_images(text).unwrap(),
            ["payments:v3", "other:v1", "secret:v9"]
        );
        assert!(base_images("ARG B=x\nFROM $B\n").is_err());
        assert!(base_images("FROM scratch\nCOPY a /a\n").unwrap().is_empty());
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
        let archive = pack(&dir, 1 << 20).unwrap();
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
        // Headers count: empty files are not free.
        let empties = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::write(empties.path().join(i.to_string()), "").unwrap();
        }
        let dir = Dir::open_ambient_dir(empties.path(), ambient_authority()).unwrap();
        assert!(matches!(
            pack(&dir, 100 * 512),
            Err(ContextError::TooLarge(_))
        ));
        // Nesting is bounded before the walk's stack is.
        let deep = tempfile::tempdir().unwrap();
        let mut path = deep.path().to_path_buf();
        for _ in 0..=MAX_CONTEXT_DEPTH + 1 {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        let dir = Dir::open_ambient_dir(deep.path(), ambient_authority()).unwrap();
        assert!(matches!(pack(&dir, 1 << 20), Err(ContextError::TooDeep)));
    }
}
