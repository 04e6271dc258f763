//! Precompiled-artifact cache: compiling a component with Cranelift takes
//! milliseconds to seconds (a Python component: seconds), loading a
//! precompiled one is a read and a copy. Artifacts are keyed by the
//! component's content hash and the engine's compatibility hash (wasmtime
//! version + settings), so a new runner or a changed plugin never loads a
//! stale artifact.
//!
//! An artifact is native code that runs inside runner, and wasmtime only
//! checks its header: a cache file whose machine code was changed would run
//! as it is. So every artifact is verified before it is deserialized:
//! beside `NAME.cwasm` lies `NAME.cwasm.tag`, a keyed BLAKE3 hash of the
//! artifact's name and bytes under a per-user random key. A mismatch (or a
//! missing tag) is reported and the component recompiled; the artifact never
//! runs. The key lives beside the cache directory, not in it
//! (`<cache dir>.key`, mode 0600), so a cache directory copied or restored
//! from elsewhere (a CI cache, another machine, another user) carries
//! artifacts but never the key that would make them pass.
//!
//! Like ssh with a world-writable key, runner refuses a cache directory (or
//! key) another user could write, or a key another user could read, or one
//! it does not own. It then runs without the cache and warns once per
//! process rather than failing: the cache is only a speed-up and compiling
//! from the plugin itself is always safe, while failing would turn a
//! permissions slip on a shared machine into a failed deploy.
//!
//! Hashing the component costs as much as loading its artifact (2.5 ms for an
//! 18 MB Python plugin), so a small index maps a file's identity (device,
//! inode, size, mtime, ctime: any write changes ctime) to its artifact, and a
//! hit on an unchanged file reads neither the file nor its hash. Index
//! entries are tagged with the same key, so a planted entry cannot point one
//! plugin's file at another plugin's artifact.

use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use wasmtime::Engine;
use wasmtime::component::Component;

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    /// The checked directory and key, set up on first use (so commands that
    /// load no plugin never touch the cache); `None` once refused.
    ready: Arc<OnceLock<Option<Ready>>>,
}

#[derive(Debug)]
struct Ready {
    dir: PathBuf,
    key: [u8; blake3::KEY_LEN],
}

/// What a load did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// Compiled and stored.
    Miss,
    /// A cached file was unusable or failed verification (corrupt, truncated,
    /// foreign, tampered with): recompiled.
    Recompiled,
    Disabled,
}

/// Why the cache directory or its key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheRefused {
    #[error("cannot write artifact cache {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "artifact cache {} is {problem}; another user could plant native code that runner would run. \
         Fix it with `chmod go-w` / `chown` (the key: `chmod 600`), or pass another --cache-dir",
        path.display()
    )]
    Unsafe { path: PathBuf, problem: String },
    #[error("cannot use the artifact cache key {}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The result of looking up an unchanged file in the identity index.
pub enum IdentityLookup {
    Hit(Component),
    /// Not indexed (or no cache).
    Absent,
    /// Indexed, but the entry or its artifact failed verification: it was
    /// removed, and the caller's recompile is a `Recompiled`.
    Rejected,
}

/// Bytes that did not match their tag, or could not be deserialized.
struct Unusable(String);

impl ArtifactCache {
    /// `None` disables caching (every load compiles).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            ready: Arc::new(OnceLock::new()),
        }
    }

    /// The default location: `$RUNNER_CACHE_DIR`, else the user cache dir.
    pub fn default_dir() -> Option<PathBuf> {
        std::env::var_os("RUNNER_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::cache_dir().map(|d| d.join("runner").join("components")))
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The key's path: beside the cache directory, not in it.
    pub fn key_path(dir: &Path) -> PathBuf {
        let mut name = dir.as_os_str().to_owned();
        name.push(".key");
        PathBuf::from(name)
    }

    /// The checked cache, or `None` (disabled, or refused with one warning).
    fn ready(&self) -> Option<&Ready> {
        let dir = self.dir.as_ref()?;
        self.ready
            .get_or_init(|| match prepare(dir) {
                Ok(ready) => Some(ready),
                Err(e) => {
                    tracing::warn!(
                        "{e}; running without the artifact cache (plugins compile on every run)"
                    );
                    None
                }
            })
            .as_ref()
    }

    /// The artifact's path for these component bytes under this engine.
    pub fn artifact_path(&self, engine: &Engine, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(artifact_name(engine, bytes)))
    }

    /// Whether this cache recorded ([`Self::vouch`]) that the file `meta`
    /// describes, unchanged since, hashed to `blake3`: a bundle's
    /// precompiled artifact verified by an earlier start. The record's name
    /// is keyed with the cache's key, so only this runner user can have made
    /// it, and any write to the file changes its ctime (a new file, its inode).
    pub fn vouched(&self, meta: &std::fs::Metadata, blake3: &str) -> bool {
        let Some(ready) = self.ready() else {
            return false;
        };
        std::fs::symlink_metadata(ready.dir.join(vouch_name(&ready.key, meta, blake3)))
            .is_ok_and(|m| m.is_file())
    }

    /// Record that the file `meta` describes hashed to `blake3`.
    pub fn vouch(&self, meta: &std::fs::Metadata, blake3: &str) {
        if let Some(ready) = self.ready() {
            let path = ready.dir.join(vouch_name(&ready.key, meta, blake3));
            if let Err(e) = std::fs::write(&path, b"") {
                tracing::debug!("recording a verified artifact in {}: {e}", path.display());
            }
        }
    }

    /// The index entry's name for a file's identity under this engine.
    fn identity_name(engine: &Engine, meta: &std::fs::Metadata) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in identity_parts(meta) {
            hasher.update(&part.to_le_bytes());
        }
        hasher.update(&engine_hash(engine).to_le_bytes());
        format!("{}.entry", hasher.finalize().to_hex())
    }

    /// A hit for the unchanged file `meta` describes, without reading it.
    ///
    /// The entry also records the identity its artifact had when it was
    /// written or last verified; while the artifact keeps that identity (any
    /// write changes its ctime, a replacement its inode) it is loaded without
    /// hashing its tens of MB again. Otherwise it is verified in full.
    pub fn load_by_identity(&self, engine: &Engine, meta: &std::fs::Metadata) -> IdentityLookup {
        let Some(ready) = self.ready() else {
            return IdentityLookup::Absent;
        };
        let entry_name = Self::identity_name(engine, meta);
        let entry = ready.dir.join("by-file").join(&entry_name);
        let text = match read_small(&entry) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return IdentityLookup::Absent,
            Err(e) => {
                return reject_entry(&entry, &format!("it is unreadable: {e}"));
            }
        };
        let text = String::from_utf8_lossy(&text);
        let mut lines = text.lines();
        let (Some(artifact), Some(recorded), Some(tag)) =
            (lines.next(), lines.next(), lines.next())
        else {
            return reject_entry(&entry, "it is malformed");
        };
        if !entry_tag(&ready.key, &entry_name, artifact, recorded).eq_hex(tag)
            || !is_artifact_name(artifact)
        {
            return reject_entry(
                &entry,
                "its tag does not match: not written by this runner for this user",
            );
        }
        let path = ready.dir.join(artifact);
        if let Some(component) = load_unchanged(engine, &path, recorded) {
            return IdentityLookup::Hit(component);
        }
        match load_verified(ready, engine, &path) {
            Ok(Some(component)) => {
                // Verified in full: record its current identity for next time.
                write_entry(ready, &entry_name, artifact);
                IdentityLookup::Hit(component)
            }
            // The artifact went away (cleaned up): the full path recompiles.
            Ok(None) => {
                let _ = std::fs::remove_file(&entry);
                IdentityLookup::Absent
            }
            Err(Unusable(why)) => {
                warn_unusable(&path, &why);
                let _ = std::fs::remove_file(&entry);
                IdentityLookup::Rejected
            }
        }
    }

    /// Remember that the file `meta` describes has the artifact for `bytes`.
    pub fn remember_identity(&self, engine: &Engine, meta: &std::fs::Metadata, bytes: &[u8]) {
        let Some(ready) = self.ready() else {
            return;
        };
        write_entry(
            ready,
            &Self::identity_name(engine, meta),
            &artifact_name(engine, bytes),
        );
    }

    /// Load `bytes` as a component, from the cache when possible. `compile`
    /// does the compiling (the runtime bounds its time).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(ready) = self.ready() else {
            return Ok((compile()?, CacheOutcome::Disabled));
        };
        let path = ready.dir.join(artifact_name(engine, bytes));
        let mut outcome = CacheOutcome::Miss;
        match load_verified(ready, engine, &path) {
            Ok(Some(component)) => return Ok((component, CacheOutcome::Hit)),
            Ok(None) => {}
            Err(Unusable(why)) => {
                warn_unusable(&path, &why);
                outcome = CacheOutcome::Recompiled;
            }
        }
        let component = compile()?;
        if let Err(e) = store(ready, &path, &component) {
            // A read-only or full cache dir slows the next start; it breaks nothing.
            tracing::warn!("cannot write artifact cache {}: {e}", path.display());
        }
        Ok((component, outcome))
    }
}

/// The identity of an artifact file, as recorded in an index entry.
fn file_identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{} {} {} {}.{} {}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// Index `entry_name` → `artifact`, with the artifact's current identity.
/// Called right after the artifact was written or verified.
fn write_entry(ready: &Ready, entry_name: &str, artifact: &str) {
    let dir = ready.dir.join("by-file");
    let write = || -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(ready.dir.join(artifact))?;
        let identity = file_identity(&meta);
        let tag = entry_tag(&ready.key, entry_name, artifact, &identity);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        write_atomic(
            &dir.join(entry_name),
            format!("{artifact}\n{identity}\n{}\n", tag.to_hex()).as_bytes(),
        )
    };
    if let Err(e) = write() {
        tracing::debug!("cannot index {}: {e}", dir.join(entry_name).display());
    }
}

/// The artifact at `path` if it still has the identity `recorded` (so it
/// is the file that was verified), mapped through the very handle that was
/// checked (`/proc/self/fd`), so a file swapped in meanwhile is not what
/// loads. `None`: changed, gone, or no /proc; the caller verifies in full.
fn load_unchanged(engine: &Engine, path: &Path, recorded: &str) -> Option<Component> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || file_identity(&meta) != recorded {
        return None;
    }
    let handle = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // SAFETY: the file is the one whose keyed hash matched its tag when this
    // entry (itself tagged) was written, unchanged since: same inode, size,
    // mtime and ctime, in a directory only this user can write.
    let component = unsafe { Component::deserialize_file(engine, &handle) }.ok();
    drop(file);
    component
}

fn warn_unusable(path: &Path, why: &str) {
    tracing::warn!(
        "cached artifact {} is unusable ({why}); it was not run, recompiling",
        path.display()
    );
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(tag_path(path));
}

fn reject_entry(entry: &Path, why: &str) -> IdentityLookup {
    tracing::warn!(
        "cache index entry {} is unusable ({why}); ignoring it",
        entry.display()
    );
    let _ = std::fs::remove_file(entry);
    IdentityLookup::Rejected
}

/// `<content hash>-<engine hash>.cwasm`.
fn artifact_name(engine: &Engine, bytes: &[u8]) -> String {
    format!(
        "{}-{:016x}.cwasm",
        blake3::hash(bytes).to_hex(),
        engine_hash(engine)
    )
}

/// Only names `artifact_name` makes: an index entry can name nothing else.
fn is_artifact_name(name: &str) -> bool {
    name.strip_suffix(".cwasm").is_some_and(|stem| {
        !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    })
}

fn tag_path(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(".tag");
    PathBuf::from(name)
}

/// The artifact's tag covers its name too, so one valid artifact cannot be
/// renamed into another plugin's place.
fn artifact_tag(key: &[u8; blake3::KEY_LEN], name: &str, bytes: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher
        .update(b"artifact\0")
        .update(name.as_bytes())
        .update(b"\0");
    hasher.update(bytes);
    hasher.finalize()
}

fn entry_tag(
    key: &[u8; blake3::KEY_LEN],
    entry: &str,
    artifact: &str,
    identity: &str,
) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher
        .update(b"by-file\0")
        .update(entry.as_bytes())
        .update(b"\0")
        .update(artifact.as_bytes())
        .update(b"\0")
        .update(identity.as_bytes());
    hasher.finalize()
}

trait EqHex {
    fn eq_hex(&self, hex: &str) -> bool;
}

impl EqHex for blake3::Hash {
    /// `blake3::Hash`'s `==` is constant-time.
    fn eq_hex(&self, hex: &str) -> bool {
        blake3::Hash::from_hex(hex.trim()).is_ok_and(|h| h == *self)
    }
}

/// The verified component at `path`; `Ok(None)` if there is none.
fn load_verified(
    ready: &Ready,
    engine: &Engine,
    path: &Path,
) -> Result<Option<Component>, Unusable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Unusable(format!("unreadable: {e}"))),
    };
    let tag = match read_small(&tag_path(path)) {
        Ok(tag) => tag,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unusable("it has no tag, so it cannot be verified".into()));
        }
        Err(e) => return Err(Unusable(format!("its tag is unreadable: {e}"))),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !artifact_tag(&ready.key, &name, &bytes).eq_hex(&String::from_utf8_lossy(&tag)) {
        return Err(Unusable(
            "its content does not match its tag: it changed after runner wrote it".into(),
        ));
    }
    // SAFETY: the bytes are exactly what `store` below wrote from wasmtime's
    // own serialization under this engine's compatibility hash: their keyed
    // hash, under a key only this user can read, matches the tag written
    // with them. Wasmtime still checks the header and version.
    match unsafe { Component::deserialize(engine, &bytes) } {
        Ok(component) => Ok(Some(component)),
        Err(e) => Err(Unusable(format!("{e}"))),
    }
}

/// Read a file of at most a few hundred bytes (a tag, an index entry)
/// without following a symlink.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(4096).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The engine compatibility tag precompiled artifacts are filed under
/// (wasmtime version and settings): an artifact made under another tag is
/// never loaded.
pub fn engine_tag(engine: &Engine) -> String {
    format!("{:016x}", engine_hash(engine))
}

fn engine_hash(engine: &Engine) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Write the artifact, then its tag, each atomically: a crash mid-write
/// leaves a temp file, or an artifact without a tag (recompiled next time),
/// never a partial artifact that verifies.
fn store(ready: &Ready, path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tag = artifact_tag(&ready.key, &name, &bytes);
    write_atomic(path, &bytes)?;
    write_atomic(&tag_path(path), format!("{}\n", tag.to_hex()).as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // NamedTempFile creates files with mode 0600.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Create the cache directory if needed, check it and the key as ssh checks
/// its files, and load (or create) the key.
fn prepare(dir: &Path) -> Result<Ready, CacheRefused> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| CacheRefused::CreateDir {
            dir: dir.into(),
            source,
        })?;
    let meta = std::fs::metadata(dir).map_err(|source| CacheRefused::CreateDir {
        dir: dir.into(),
        source,
    })?;
    check_owner_and_mode(dir, &meta, 0o022)?;
    let key_path = ArtifactCache::key_path(dir);
    // The key's directory: if another user could replace the key there, it
    // could forge tags. A sticky directory (/tmp) lets no one replace
    // another's file, and a key someone else planted is refused below.
    if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(meta) = std::fs::metadata(parent)
        && meta.mode() & 0o1000 == 0
    {
        check_owner_and_mode(parent, &meta, 0o022).or_else(|e| {
            // A parent owned by root (e.g. /var/cache) is fine if only root writes it.
            if meta.uid() == 0 && meta.mode() & 0o022 == 0 {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    }
    let key = load_or_create_key(&key_path)?;
    Ok(Ready {
        dir: dir.into(),
        key,
    })
}

fn check_owner_and_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    forbidden: u32,
) -> Result<(), CacheRefused> {
    let unsafe_because = |problem: String| CacheRefused::Unsafe {
        path: path.into(),
        problem,
    };
    if meta.uid() != euid() {
        return Err(unsafe_because(format!(
            "owned by uid {}, not by runner's user (uid {})",
            meta.uid(),
            euid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & forbidden != 0 {
        let what = if forbidden & 0o044 != 0 {
            "readable or writable"
        } else {
            "writable"
        };
        return Err(unsafe_because(format!(
            "{what} by group or others (mode {mode:03o})"
        )));
    }
    Ok(())
}

fn load_or_create_key(path: &Path) -> Result<[u8; blake3::KEY_LEN], CacheRefused> {
    let key_error = |source: std::io::Error| CacheRefused::Key {
        path: path.into(),
        source,
    };
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
    };
    let file = match open() {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; blake3::KEY_LEN];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut r| r.read_exact(&mut key))
                .map_err(key_error)?;
            let dir = path.parent().unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(key_error)?;
            tmp.write_all(&key).map_err(key_error)?;
            tmp.as_file().sync_all().map_err(key_error)?;
            // Another runner may have created it meanwhile: then use theirs.
            match tmp.persist_noclobber(path) {
                Ok(_) => {}
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(key_error(e.error)),
            }
            open().map_err(key_error)?
        }
        Err(e) => return Err(key_error(e)),
    };
    let meta = file.metadata().map_err(key_error)?;
    if !meta.is_file() {
        return Err(key_error(std::io::Error::other("not a regular file")));
    }
    check_owner_and_mode(path, &meta, 0o077)?;
    let mut key = [0u8; blake3::KEY_LEN];
    let mut rest = Vec::new();
    let mut reader = file.take(blake3::KEY_LEN as u64 + 1);
    reader.read_to_end(&mut rest).map_err(key_error)?;
    if rest.len() != blake3::KEY_LEN {
        return Err(key_error(std::io::Error::other(format!(
            "it holds {} bytes, not {}; delete it and runner makes a new one",
            rest.len(),
            blake3::KEY_LEN
        ))));
    }
    key.copy_from_slice(&rest);
    Ok(key)
}

/// What changes when a file is written or replaced: device, inode, size,
/// modification and change times.
fn identity_parts(meta: &std::fs::Metadata) -> [u64; 7] {
    [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ]
}

/// The name of a [`ArtifactCache::vouch`] record: the file's identity and
/// its expected BLAKE3, hashed with the cache's key.
fn vouch_name(key: &[u8; blake3::KEY_LEN], meta: &std::fs::Metadata, blake3: &str) -> String {
    let mut hasher = blake3::Hasher::new_keyed(key);
    for part in identity_parts(meta) {
        hasher.update(&part.to_le_bytes());
    }
    hasher.update(blake3.as_bytes());
    format!("{}.verified", hasher.finalize().to_hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vouch_holds_only_for_the_unchanged_file_and_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(Some(dir.path().join("cache")));
        let file = dir.path().join("artifact.cwasm");
        std::fs::write(&file, b"native code").unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert!(!cache.vouched(&meta, "abc"));
        cache.vouch(&meta, "abc");
        assert!(cache.vouched(&meta, "abc"));
        assert!(!cache.vouched(&meta, "abd"), "another expected hash");
        // Any write changes the identity: the record no longer holds.
        std::fs::write(&file, b"other, longer native code").unwrap();
        assert!(!cache.vouched(&std::fs::metadata(&file).unwrap(), "abc"));
        // Another key (another user's cache) made no record.
        let other = ArtifactCache::new(Some(dir.path().join("other")));
        assert!(!other.vouched(&meta, "abc"));
        // No cache, no records.
        assert!(!ArtifactCache::new(None).vouched(&meta, "abc"));
    }

    fn component(engine: &Engine) -> Component {
        Component::new(engine, "(component)").expect("empty component")
    }

    fn artifacts(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect();
        found.sort();
        found
    }

    #[test]
    fn a_tampered_artifact_is_never_deserialized() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = Engine::default();
        let cache = ArtifactCache::new(Some(dir.clone()));
        let bytes = b"component bytes";
        let (_, outcome) = cache
            .load(&engine, bytes, || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Miss);
        let (_, outcome) = cache.load(&engine, bytes, || panic!("must hit")).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);

        let [artifact] = artifacts(&dir).try_into().unwrap();
        let mut data = std::fs::read(&artifact).unwrap();
        let at = data.len() * 3 / 4;
        data[at] ^= 0xff;
        std::fs::write(&artifact, &data).unwrap();
        let (_, outcome) = cache
            .load(&engine, bytes, || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Recompiled);
        let (_, outcome) = cache.load(&engine, bytes, || panic!("must hit")).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit);
    }

    #[test]
    fn an_artifact_from_another_key_or_without_a_tag_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = Engine::default();
        let bytes = b"component bytes";
        ArtifactCache::new(Some(dir.clone()))
            .load(&engine, bytes, || Ok(component(&engine)))
            .unwrap();
        // Another user's (or machine's) key: the same artifact no longer verifies.
        std::fs::write(ArtifactCache::key_path(&dir), [7u8; 32]).unwrap();
        let (_, outcome) = ArtifactCache::new(Some(dir.clone()))
            .load(&engine, bytes, || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Recompiled);

        let [artifact] = artifacts(&dir).try_into().unwrap();
        std::fs::remove_file(tag_path(&artifact)).unwrap();
        let (_, outcome) = ArtifactCache::new(Some(dir.clone()))
            .load(&engine, bytes, || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Recompiled);
    }

    #[test]
    fn a_renamed_artifact_does_not_verify_under_another_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let engine = Engine::default();
        let cache = ArtifactCache::new(Some(dir.clone()));
        cache
            .load(&engine, b"one", || Ok(component(&engine)))
            .unwrap();
        let one = dir.join(artifact_name(&engine, b"one"));
        let two = dir.join(artifact_name(&engine, b"two"));
        std::fs::copy(&one, &two).unwrap();
        std::fs::copy(tag_path(&one), tag_path(&two)).unwrap();
        let (_, outcome) = cache
            .load(&engine, b"two", || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Recompiled);
    }

    #[test]
    fn unsafe_directories_and_keys_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = prepare(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains("writable by group or others (mode 775)"),
            "{err}"
        );

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare(&dir).unwrap();
        let key = ArtifactCache::key_path(&dir);
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = prepare(&dir).unwrap_err();
        assert!(
            err.to_string()
                .contains("readable or writable by group or others"),
            "{err}"
        );

        // A refused cache compiles every time and never writes.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let engine = Engine::default();
        let cache = ArtifactCache::new(Some(dir.clone()));
        let (_, outcome) = cache
            .load(&engine, b"x", || Ok(component(&engine)))
            .unwrap();
        assert_eq!(outcome, CacheOutcome::Disabled);
        assert!(artifacts(&dir).is_empty());
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        let first = prepare(&dir).unwrap().key;
        let second = prepare(&dir).unwrap().key;
        assert_eq!(first, second);
        assert_ne!(first, [0u8; 32]);
    }
}
