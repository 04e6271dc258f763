//! Deploy locks for the embedded registry: an exclusive OS file lock on
//! `<state>/locks/<service>.lock`, holding the holder's metadata. The kernel
//! releases it when the holder exits or crashes, so it never goes stale.

use super::{DeployLocks, LockAttempt, LockGuard, LockHolder, RegistryError, off_thread};
use async_trait::async_trait;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

fn lock_path(state_dir: &Path, service: &str) -> Result<PathBuf, RegistryError> {
    if service.is_empty() || service.contains(['/', '\\']) || service.starts_with('.') {
        return Err(RegistryError::Backend(format!(
            "\"{service}\" is not a service name a lock can be taken for"
        )));
    }
    Ok(state_dir.join("locks").join(format!("{service}.lock")))
}

fn io(path: &Path, e: std::io::Error) -> RegistryError {
    RegistryError::Unavailable(format!("lock file {}: {e}", path.display()))
}

fn open(state_dir: &Path, service: &str) -> Result<(PathBuf, File), RegistryError> {
    let path = lock_path(state_dir, service)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    Ok((path, file))
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

struct FileLock {
    path: PathBuf,
    file: File,
}

#[async_trait]
impl LockGuard for FileLock {
    async fn release(self: Box<Self>) -> Result<(), RegistryError> {
        let path = self.path.clone();
        off_thread(&path, move || {
            // Empty the metadata first, so nobody reads a stale holder.
            self.file.set_len(0).map_err(|e| io(&self.path, e))?;
            self.file.unlock().map_err(|e| io(&self.path, e))
        })
        .await
    }
}

/// The deploy locks of the state directory this holds; each call runs on
/// the blocking pool (opening, locking and syncing a file).
#[derive(Debug, Clone)]
pub(super) struct FileLocks {
    state_dir: PathBuf,
}

impl FileLocks {
    pub(super) fn new(state_dir: PathBuf) -> Self {
        Self { state_dir }
    }
}

#[async_trait]
impl DeployLocks for FileLocks {
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        let (dir, service, holder) = (self.state_dir.clone(), service.to_owned(), holder.clone());
        off_thread(&self.state_dir, move || try_lock(&dir, &service, &holder)).await
    }

    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        let (dir, service) = (self.state_dir.clone(), service.to_owned());
        off_thread(&self.state_dir, move || self::holder(&dir, &service)).await
    }

    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        let (dir, service) = (self.state_dir.clone(), service.to_owned());
        off_thread(&self.state_dir, move || force_unlock(&dir, &service)).await
    }
}

fn try_lock(
    state_dir: &Path,
    service: &str,
    holder: &LockHolder,
) -> Result<LockAttempt, RegistryError> {
    let (path, mut file) = open(state_dir, service)?;
    match file.try_lock() {
        Ok(()) => {
            let json =
                serde_json::to_vec(holder).map_err(|e| RegistryError::Backend(e.to_string()))?;
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| file.write_all(&json))
                .and_then(|_| file.sync_all())
                .map_err(|e| io(&path, e))?;
            Ok(LockAttempt::Acquired(Box::new(FileLock { path, file })))
        }
        Err(TryLockError::WouldBlock) => Ok(LockAttempt::Held(read_holder(&mut file))),
        Err(TryLockError::Error(e)) => Err(io(&path, e)),
    }
}

fn holder(state_dir: &Path, service: &str) -> Result<Option<LockHolder>, RegistryError> {
    let (path, mut file) = open(state_dir, service)?;
    match file.try_lock() {
        Ok(()) => {
            file.unlock().map_err(|e| io(&path, e))?;
            Ok(None)
        }
        Err(TryLockError::WouldBlock) => Ok(read_holder(&mut file)),
        Err(TryLockError::Error(e)) => Err(io(&path, e)),
    }
}

/// A file lock belongs to a live process (a dead one's is already free):
/// it cannot be broken from outside, only its holder can be stopped.
fn force_unlock(state_dir: &Path, service: &str) -> Result<bool, RegistryError> {
    match holder(state_dir, service)? {
        None => Ok(false),
        Some(h) => Err(RegistryError::Refused(format!(
            "the deploy lock of {service} is held by a running process ({h}); a file lock cannot be broken: stop that process (kill {}) and the lock is released",
            h.pid
        ))),
    }
}
