//! The embedded registry: SQLite in WAL mode inside the state directory.
//!
//! Why SQLite: every write is a durable transaction (crash-safe), and several
//! runner processes can share one state directory at once: writers queue on
//! SQLite's lock (bounded by the busy timeout) instead of failing or losing
//! updates. Modify indexes come from one counter bumped in the same
//! transaction as the write, as Consul's raft index does.

use super::{
    Dependency, Instance, KvEntry, LockAttempt, LockHolder, Registry, RegistryError, filelock,
};
use async_trait::async_trait;
use backon::{BlockingRetryable, ExponentialBuilder};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('index', 0);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_index INTEGER NOT NULL,
    modify_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    tags TEXT NOT NULL,
    healthy INTEGER NOT NULL,
    PRIMARY KEY (service, id)
);
";

pub struct EmbeddedRegistry {
    state_dir: PathBuf,
    path: PathBuf,
    /// [`identity`] of `state_dir`, taken at open.
    identity: String,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("path", &self.path)
            .finish()
    }
}

/// How often a watcher looks at the write counter: a local file read.
const WATCH_POLL: Duration = Duration::from_millis(100);

fn unavailable(path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("state database {}: {e}", path.display()))
}

impl EmbeddedRegistry {
    /// Open (creating if needed) the registry in `state_dir`. `busy_timeout`
    /// bounds how long a call waits for another process holding the write lock.
    pub fn open(state_dir: &Path, busy_timeout: Duration) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            RegistryError::Unavailable(format!(
                "cannot create state directory {}: {e}; pass a writable one with --state-dir",
                state_dir.display()
            ))
        })?;
        let path = state_dir.join("registry.sqlite3");
        let conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| unavailable(&path, e))?;
        // Switching a new database to WAL answers "locked" at once, without the
        // busy handler, while another process does the same: retry until the
        // busy timeout, as every other statement waits.
        let retry = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(100))
            .with_total_delay(Some(busy_timeout))
            .without_max_times()
            .with_jitter();
        (|| initialize(&conn))
            .retry(retry)
            .sleep(std::thread::sleep)
            .when(is_busy)
            .call()
            .map_err(|e| unavailable(&path, e))?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            path,
            identity: identity(state_dir),
            conn: Mutex::new(conn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, RegistryError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| RegistryError::Backend("registry connection poisoned".into()))?;
        f(&mut conn).map_err(|e| match e {
            ref busy if is_busy(busy) => {
                unavailable(&self.path, format!("{e} (another runner holds the lock)"))
            }
            other => RegistryError::Backend(format!("{}: {other}", self.path.display())),
        })
    }

    /// The write counter: every KV or catalog write bumps it.
    fn current_index(&self) -> Result<u64, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE name = 'index'")?
                .query_row([], |r| r.get(0))
        })
    }

    /// Run `f` in an immediate (write-locked) transaction with the next index.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> rusqlite::Result<Option<T>>,
    ) -> Result<Option<T>, RegistryError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let index: u64 = tx.query_row(
                "UPDATE meta SET value = value + 1 WHERE name = 'index' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            match f(&tx, index)? {
                // Nothing written: roll back so the index is not consumed.
                None => {
                    tx.rollback()?;
                    Ok(None)
                }
                Some(v) => {
                    tx.commit()?;
                    Ok(Some(v))
                }
            }
        })
    }
}

/// WAL (readers never block writers), FULL sync (a committed write survives
/// power loss), and the schema.
fn initialize(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA} COMMIT;"))
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KvEntry> {
    Ok(KvEntry {
        key: r.get(0)?,
        value: r.get(1)?,
        create_index: r.get(2)?,
        modify_index: r.get(3)?,
    })
}

fn instance_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Instance> {
    let tags: String = r.get(4)?;
    Ok(Instance {
        name: r.get(0)?,
        id: r.get(1)?,
        address: r.get(2)?,
        port: r.get(3)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        healthy: r.get(5)?,
    })
}

fn upsert(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    value: &[u8],
    index: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO kv (key, value, create_index, modify_index) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, modify_index = excluded.modify_index",
    )?
    .execute(params![key, value, index])?;
    Ok(())
}

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

/// SQLite LIKE-free prefix match: keys in [prefix, prefix + U+10FFFF).
fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

// The embedded store's calls are local and short; they run inline on the
// async task (a thread hop would cost more than the query), bounded by the
// SQLite busy timeout when another process holds the write lock.
#[async_trait]
impl Registry for EmbeddedRegistry {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached(
                "SELECT key, value, create_index, modify_index FROM kv WHERE key = ?1",
            )?
            .query_row([key], entry_from_row)
            .optional()
        })
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError> {
        let index = self.write(|tx, index| upsert(tx, key, value, index).map(|_| Some(index)))?;
        index.ok_or_else(|| RegistryError::Backend("put wrote nothing".into()))
    }

    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError> {
        let written = self.write(|tx, index| {
            let current: Option<u64> = tx
                .prepare_cached("SELECT modify_index FROM kv WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            if current.unwrap_or(0) != expected {
                return Ok(None);
            }
            upsert(tx, key, value, index)?;
            Ok(Some(()))
        })?;
        Ok(written.is_some())
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError> {
        let deleted = self.write(|tx, _| {
            let n = tx
                .prepare_cached("DELETE FROM kv WHERE key = ?1")?
                .execute([key])?;
            Ok((n > 0).then_some(()))
        })?;
        Ok(deleted.is_some())
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError> {
        let listed = self.with_conn(|c| {
            let mut statement = c.prepare_cached(
                "SELECT key, value, create_index, modify_index FROM kv
                 WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?;
            let mut rows = statement.query(params![prefix, prefix_upper_bound(prefix)])?;
            let (mut entries, mut bytes) = (Vec::new(), 0usize);
            while let Some(row) = rows.next()? {
                let entry = entry_from_row(row)?;
                bytes += entry.key.len() + entry.value.len();
                if bytes > super::MAX_LIST_BYTES {
                    return Ok(None);
                }
                entries.push(entry);
            }
            Ok(Some(entries))
        })?;
        listed.ok_or_else(|| super::list_too_large(prefix))
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached(
                "SELECT service, id, address, port, tags, healthy FROM instances
                 WHERE service = ?1 ORDER BY id",
            )?
            .query_map([service], instance_from_row)?
            .collect()
        })
    }

    async fn services(&self) -> Result<Vec<String>, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT DISTINCT service FROM instances ORDER BY service")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
    }

    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        let tags = serde_json::to_string(&instance.tags)
            .map_err(|e| RegistryError::Backend(format!("encoding tags: {e}")))?;
        let mut owner: Option<String> = None;
        self.write(|tx, _| {
            // IDs are unique across services, as on a Consul agent: an ID
            // another service uses is refused, never taken over.
            owner = tx
                .prepare_cached("SELECT service FROM instances WHERE id = ?1 AND service != ?2")?
                .query_row([&instance.id, &instance.name], |r| r.get(0))
                .optional()?;
            if owner.is_some() {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO instances (service, id, address, port, tags, healthy)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                instance.name,
                instance.id,
                instance.address,
                instance.port,
                tags,
                instance.healthy
            ])?;
            Ok(Some(()))
        })?;
        match owner {
            Some(owner) => Err(RegistryError::Conflict(format!(
                "instance ID \"{}\" belongs to service \"{owner}\"; pick another ID",
                instance.id
            ))),
            None => Ok(()),
        }
    }

    /// Polls the write counter: any write may have changed `dep` (one
    /// counter for all data, so wake-ups can be spurious, never missed).
    async fn wait_for_change(
        &self,
        _dep: &Dependency,
        index: u64,
        wait: Duration,
    ) -> Result<u64, RegistryError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = self.current_index()?;
            let now = tokio::time::Instant::now();
            if current != index || now >= deadline {
                return Ok(current);
            }
            tokio::time::sleep(WATCH_POLL.min(deadline - now)).await;
        }
    }

    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        filelock::try_lock(&self.state_dir, service, holder)
    }

    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        filelock::holder(&self.state_dir, service)
    }

    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        filelock::force_unlock(&self.state_dir, service)
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        let removed = self.write(|tx, _| {
            let n = tx
                .prepare_cached("DELETE FROM instances WHERE service = ?1 AND id = ?2")?
                .execute([service, id])?;
            Ok((n > 0).then_some(()))
        })?;
        Ok(removed.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, EmbeddedRegistry) {
        let dir = tempfile::tempdir().unwrap();
        let reg = EmbeddedRegistry::open(dir.path(), Duration::from_secs(5)).unwrap();
        (dir, reg)
    }

    #[tokio::test]
    async fn put_get_and_indexes_advance() {
        let (_d, reg) = open();
        assert_eq!(reg.kv_get("a/b").await.unwrap(), None);
        let i1 = reg.kv_put("a/b", b"blue").await.unwrap();
        let i2 = reg.kv_put("a/b", b"green").await.unwrap();
        assert!(i2 > i1);
        let e = reg.kv_get("a/b").await.unwrap().unwrap();
        assert_eq!(e.value, b"green");
        assert_eq!(e.create_index, i1);
        assert_eq!(e.modify_index, i2);
    }

    #[tokio::test]
    async fn cas_succeeds_only_on_matching_index() {
        let (_d, reg) = open();
        assert!(
            reg.kv_cas("k", b"1", 0).await.unwrap(),
            "create-only on absent key"
        );
        assert!(
            !reg.kv_cas("k", b"2", 0).await.unwrap(),
            "create-only on present key"
        );
        let idx = reg.kv_get("k").await.unwrap().unwrap().modify_index;
        assert!(!reg.kv_cas("k", b"2", idx + 100).await.unwrap());
        assert_eq!(reg.kv_get("k").await.unwrap().unwrap().value, b"1");
        assert!(reg.kv_cas("k", b"2", idx).await.unwrap());
        assert_eq!(reg.kv_get("k").await.unwrap().unwrap().value, b"2");
    }

    #[tokio::test]
    async fn list_is_prefix_scoped_and_sorted() {
        let (_d, reg) = open();
        for k in ["app/b", "app/a", "apple", "app/c/d", "other"] {
            reg.kv_put(k, b"x").await.unwrap();
        }
        let keys: Vec<_> = reg
            .kv_list("app/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["app/a", "app/b", "app/c/d"]);
        assert!(reg.kv_delete("app/a").await.unwrap());
        assert!(!reg.kv_delete("app/a").await.unwrap());
    }

    #[tokio::test]
    async fn catalog_register_replace_deregister() {
        let (_d, reg) = open();
        let mut inst = Instance {
            id: "n:c:80".into(),
            name: "web-blue".into(),
            address: "127.0.0.1".into(),
            port: 32769,
            tags: vec!["v1".into()],
            healthy: true,
        };
        reg.register(&inst).await.unwrap();
        inst.port = 32770;
        reg.register(&inst).await.unwrap();
        assert_eq!(reg.instances("web-blue").await.unwrap(), vec![inst.clone()]);
        assert_eq!(reg.services().await.unwrap(), ["web-blue"]);
        assert!(reg.deregister("web-blue", "n:c:80").await.unwrap());
        assert!(reg.instances("web-blue").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_instance_id_of_another_service_is_refused() {
        let (_d, reg) = open();
        let payments = Instance {
            id: "pay-1".into(),
            name: "payments".into(),
            address: "127.0.0.1".into(),
            port: 9000,
            tags: vec![],
            healthy: true,
        };
        reg.register(&payments).await.unwrap();
        let hijack = Instance {
            name: "books-ms".into(),
            port: 6666,
            ..payments.clone()
        };
        let before = reg.current_index().unwrap();
        let Err(RegistryError::Conflict(msg)) = reg.register(&hijack).await else {
            panic!("registering another service's ID must be refused")
        };
        assert!(msg.contains("belongs to service \"payments\""), "{msg}");
        assert_eq!(reg.instances("payments").await.unwrap(), vec![payments]);
        assert!(reg.instances("books-ms").await.unwrap().is_empty());
        // A refused write consumes no index (watchers see no change).
        assert_eq!(reg.current_index().unwrap(), before);
        assert!(!reg.deregister("books-ms", "pay-1").await.unwrap());
    }

    /// Several runners opening a fresh state dir at the same moment: SQLite
    /// refuses concurrent switches to WAL without waiting, so `open` retries.
    #[test]
    fn concurrent_first_opens_all_succeed() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        EmbeddedRegistry::open(&path, Duration::from_secs(10)).map(|_| ())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        }
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let reg = EmbeddedRegistry::open(dir.path(), Duration::from_secs(5)).unwrap();
            reg.kv_put("svc/color", b"blue").await.unwrap();
        }
        let reg = EmbeddedRegistry::open(dir.path(), Duration::from_secs(5)).unwrap();
        assert_eq!(
            reg.kv_get("svc/color").await.unwrap().unwrap().value,
            b"blue"
        );
    }

    /// One state directory has one identity however it is named, before and
    /// after it exists; another directory has another.
    #[test]
    fn identity_follows_the_canonical_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let before = identity(&state);
        assert!(before.starts_with("embedded:"), "{before}");
        assert_eq!(before.len(), "embedded:".len() + 16, "{before}");
        let reg = EmbeddedRegistry::open(&state, Duration::from_secs(5)).unwrap();
        assert_eq!(reg.identity(), before, "the same before and after creation");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        assert_eq!(identity(&link), before, "through a symlink");
        std::fs::create_dir(dir.path().join("x")).unwrap();
        assert_eq!(identity(&dir.path().join("x/../state")), before, "with ..");
        assert_eq!(
            super::super::LazyRegistry::new(state.clone(), Duration::from_secs(5)).identity(),
            before,
            "the lazy store, unopened"
        );
        assert_ne!(identity(&dir.path().join("other")), before);
    }
}
