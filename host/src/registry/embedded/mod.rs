//! The embedded registry: SQLite in WAL mode inside the state directory.
//!
//! Why SQLite: every write is a durable transaction (crash-safe), and several
//! runner processes can share one state directory at once: writers queue on
//! SQLite's lock (bounded by the busy timeout) instead of failing or losing
//! updates. Modify indexes come from one counter bumped in the same
//! transaction as the write, as Consul's raft index does.
//!
//! SQLite calls block (a write may wait out the busy timeout behind another
//! process): each runs on tokio's blocking pool, never on an async worker.

mod identity;

pub(crate) use identity::identity;

use super::filelock::FileLocks;
use super::{
    Catalog, Dependency, DeployLocks, Health, Instance, KvEntry, KvStore, LockAttempt, LockHolder,
    Registry, RegistryError, Watch, off_thread,
};
use async_trait::async_trait;
use backon::{BlockingRetryable, ExponentialBuilder};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// Columns added after the first release, with their defaults: `healthy`
/// stays (written alongside `status`) so an older runner sharing the state
/// directory still reads the catalog.
const INSTANCE_COLUMNS: &[(&str, &str)] = &[
    ("status", "TEXT NOT NULL DEFAULT ''"),
    ("node", "TEXT NOT NULL DEFAULT ''"),
    ("node_address", "TEXT NOT NULL DEFAULT ''"),
    ("meta", "TEXT NOT NULL DEFAULT '{}'"),
];

pub struct EmbeddedRegistry {
    store: Arc<Store>,
    /// [`identity`] of the state directory, taken at open.
    identity: String,
    locks: FileLocks,
    /// The scratch state directory of an in-memory store, removed with it.
    _scratch: Option<tempfile::TempDir>,
}

/// The connection, shared with the blocking threads that use it.
struct Store {
    /// The database file (`:memory:` for an in-memory store), for messages.
    path: PathBuf,
    /// A fair (first come, first served) async lock, taken before a call is
    /// handed to a blocking thread: calls run in the order they were made, and
    /// one whose caller gave up while waiting (a host-call timeout) never runs.
    conn: Arc<tokio::sync::Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRegistry")
            .field("path", &self.store.path)
            .finish()
    }
}

/// How often a watcher looks at the write counter: a local file read.
const WATCH_POLL: Duration = Duration::from_millis(100);

fn unavailable(path: &Path, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("state database {}: {e}", path.display()))
}

/// What a write transaction did: `Ok` committed, `Err` wrote nothing and
/// rolled back (so the index is not consumed), with why.
type Written<T, R> = Result<T, R>;

impl EmbeddedRegistry {
    /// Open (creating if needed) the registry in `state_dir`. `busy_timeout`
    /// bounds how long a call waits for another process holding the write lock.
    /// Blocks (up to `busy_timeout`): async callers run it off the workers.
    pub fn open(state_dir: &Path, busy_timeout: Duration) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            RegistryError::Unavailable(format!(
                "cannot create state directory {}: {e}; pass a writable one with --state-dir",
                state_dir.display()
            ))
        })?;
        let path = state_dir.join("registry.sqlite3");
        let conn = Connection::open(&path).map_err(|e| unavailable(&path, e))?;
        Self::prepare(state_dir, path, conn, busy_timeout, None)
    }

    /// A private registry in memory, for in-process tests: the same schema,
    /// indexes and semantics as [`open`](Self::open), its deploy lock files
    /// in a scratch directory removed when the value is dropped.
    pub fn in_memory(busy_timeout: Duration) -> Result<Self, RegistryError> {
        let scratch = tempfile::Builder::new()
            .prefix("runner-registry-")
            .tempdir()
            .map_err(|e| {
                RegistryError::Unavailable(format!("cannot create a scratch state directory: {e}"))
            })?;
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| unavailable(&path, e))?;
        let state_dir = scratch.path().to_path_buf();
        Self::prepare(&state_dir, path, conn, busy_timeout, Some(scratch))
    }

    fn prepare(
        state_dir: &Path,
        path: PathBuf,
        conn: Connection,
        busy_timeout: Duration,
        scratch: Option<tempfile::TempDir>,
    ) -> Result<Self, RegistryError> {
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
            store: Arc::new(Store {
                path,
                conn: Arc::new(tokio::sync::Mutex::new(conn)),
            }),
            identity: identity(state_dir),
            locks: FileLocks::new(state_dir.to_path_buf()),
            _scratch: scratch,
        })
    }

    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// Run `f` on the connection, on the blocking pool.
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, RegistryError> {
        let mut conn = Arc::clone(&self.store.conn).lock_owned().await;
        let path = self.store.path.clone();
        off_thread(&self.store.path, move || run(&path, &mut conn, f)).await
    }

    /// The write counter: every KV or catalog write bumps it.
    async fn current_index(&self) -> Result<u64, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE name = 'index'")?
                .query_row([], |r| r.get(0))
        })
        .await
    }

    /// Run `f` in an immediate (write-locked) transaction with the next index.
    async fn write<T: Send + 'static, R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, u64) -> rusqlite::Result<Written<T, R>>
        + Send
        + 'static,
    ) -> Result<Written<T, R>, RegistryError> {
        self.with_conn(|conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let index: u64 = tx.query_row(
                "UPDATE meta SET value = value + 1 WHERE name = 'index' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            let written = f(&tx, index)?;
            match written {
                Ok(_) => tx.commit()?,
                // Nothing written: roll back so the index is not consumed.
                Err(_) => tx.rollback()?,
            }
            Ok(written)
        })
        .await
    }
}

/// `f` on the connection, its errors typed: busy past the timeout is
/// `Unavailable`, anything else `Backend`.
fn run<T>(
    path: &Path,
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> Result<T, RegistryError> {
    f(conn).map_err(|e| match e {
        ref busy if is_busy(busy) => {
            unavailable(path, format!("{e} (another runner holds the lock)"))
        }
        other => RegistryError::Backend(format!("{}: {other}", path.display())),
    })
}

/// WAL (readers never block writers), FULL sync (a committed write survives
/// power loss), and the schema.
fn initialize(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    let existing: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('instances')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, definition) in INSTANCE_COLUMNS {
        if !existing.iter().any(|c| c == column) {
            tx.execute_batch(&format!(
                "ALTER TABLE instances ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    tx.commit()
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

const INSTANCE_SELECT: &str = "SELECT service, id, address, port, tags, healthy, status, node, node_address, meta FROM instances";

fn instance_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Instance> {
    let tags: String = r.get(4)?;
    let healthy: bool = r.get(5)?;
    let status: String = r.get(6)?;
    let node: String = r.get(7)?;
    let node_address: String = r.get(8)?;
    let meta: String = r.get(9)?;
    let mut instance = Instance {
        name: r.get(0)?,
        id: r.get(1)?,
        address: r.get(2)?,
        port: r.get(3)?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        // Rows an older runner wrote have only `healthy`.
        status: Health::parse(&status).unwrap_or(if healthy {
            Health::Passing
        } else {
            Health::Critical
        }),
        node: if node.is_empty() {
            local_node().to_string()
        } else {
            node
        },
        node_address: if node_address.is_empty() {
            "127.0.0.1".to_string()
        } else {
            node_address
        },
        meta: serde_json::from_str(&meta).unwrap_or_default(),
        checks: Vec::new(),
    };
    instance.checks = instance.synthesized_checks();
    Ok(instance)
}

/// The node instances registered here without one run on: this machine, by
/// its host name, as a Consul agent names its node.
fn local_node() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(super::this_host)
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

/// SQLite LIKE-free prefix match: keys in [prefix, prefix + U+10FFFF).
fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[async_trait]
impl KvStore for EmbeddedRegistry {
    async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, RegistryError> {
        let key = key.to_owned();
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT key, value, create_index, modify_index FROM kv WHERE key = ?1",
            )?
            .query_row([key], entry_from_row)
            .optional()
        })
        .await
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> Result<u64, RegistryError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        let written = self
            .write(move |tx, index| {
                upsert(tx, &key, &value, index)?;
                Ok(Ok::<_, std::convert::Infallible>(index))
            })
            .await?;
        Ok(written.unwrap_or_else(|never| match never {}))
    }

    async fn kv_cas(&self, key: &str, value: &[u8], expected: u64) -> Result<bool, RegistryError> {
        let (key, value) = (key.to_owned(), value.to_vec());
        let written = self
            .write(move |tx, index| {
                let current: Option<u64> = tx
                    .prepare_cached("SELECT modify_index FROM kv WHERE key = ?1")?
                    .query_row([&key], |r| r.get(0))
                    .optional()?;
                if current.unwrap_or(0) != expected {
                    return Ok(Err(()));
                }
                upsert(tx, &key, &value, index)?;
                Ok(Ok(()))
            })
            .await?;
        Ok(written.is_ok())
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, RegistryError> {
        let key = key.to_owned();
        let deleted = self
            .write(move |tx, _| {
                let n = tx
                    .prepare_cached("DELETE FROM kv WHERE key = ?1")?
                    .execute([key])?;
                Ok(if n > 0 { Ok(()) } else { Err(()) })
            })
            .await?;
        Ok(deleted.is_ok())
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<KvEntry>, RegistryError> {
        let owned = prefix.to_owned();
        let listed = self
            .with_conn(move |c| {
                let mut statement = c.prepare_cached(
                    "SELECT key, value, create_index, modify_index FROM kv
                     WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )?;
                let mut rows = statement.query(params![owned, prefix_upper_bound(&owned)])?;
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
            })
            .await?;
        listed.ok_or_else(|| super::list_too_large(prefix))
    }
}

#[async_trait]
impl Catalog for EmbeddedRegistry {
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        let service = service.to_owned();
        self.with_conn(move |c| {
            c.prepare_cached(&format!("{INSTANCE_SELECT} WHERE service = ?1 ORDER BY id"))?
                .query_map([service], instance_from_row)?
                .collect()
        })
        .await
    }

    async fn services(&self) -> Result<Vec<String>, RegistryError> {
        self.with_conn(|c| {
            c.prepare_cached("SELECT DISTINCT service FROM instances ORDER BY service")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
    }

    async fn register(&self, instance: &Instance) -> Result<(), RegistryError> {
        let tags = serde_json::to_string(&instance.tags)
            .map_err(|e| RegistryError::Backend(format!("encoding tags: {e}")))?;
        let meta = serde_json::to_string(&instance.meta)
            .map_err(|e| RegistryError::Backend(format!("encoding meta: {e}")))?;
        let row = instance.clone();
        let written = self
            .write(move |tx, _| {
                // IDs are unique across services, as on a Consul agent: an ID
                // another service uses is refused, never taken over.
                let owner: Option<String> = tx
                    .prepare_cached(
                        "SELECT service FROM instances WHERE id = ?1 AND service != ?2",
                    )?
                    .query_row([&row.id, &row.name], |r| r.get(0))
                    .optional()?;
                if let Some(owner) = owner {
                    return Ok(Err(owner));
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO instances
                     (service, id, address, port, tags, healthy, status, node, node_address, meta)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?
                .execute(params![
                    row.name,
                    row.id,
                    row.address,
                    row.port,
                    tags,
                    row.healthy(),
                    row.status.as_str(),
                    row.node,
                    row.node_address,
                    meta
                ])?;
                Ok(Ok(()))
            })
            .await?;
        written.map_err(|owner| {
            RegistryError::Conflict(format!(
                "instance ID \"{}\" belongs to service \"{owner}\"; pick another ID",
                instance.id
            ))
        })
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, RegistryError> {
        let (service, id) = (service.to_owned(), id.to_owned());
        let removed = self
            .write(move |tx, _| {
                let n = tx
                    .prepare_cached("DELETE FROM instances WHERE service = ?1 AND id = ?2")?
                    .execute([service, id])?;
                Ok(if n > 0 { Ok(()) } else { Err(()) })
            })
            .await?;
        Ok(removed.is_ok())
    }
}

#[async_trait]
impl Watch for EmbeddedRegistry {
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
            let current = self.current_index().await?;
            let now = tokio::time::Instant::now();
            if current != index || now >= deadline {
                return Ok(current);
            }
            tokio::time::sleep(WATCH_POLL.min(deadline - now)).await;
        }
    }
}

/// Locks are files beside the database (see `filelock`).
#[async_trait]
impl DeployLocks for EmbeddedRegistry {
    async fn try_lock(
        &self,
        service: &str,
        holder: &LockHolder,
    ) -> Result<LockAttempt, RegistryError> {
        self.locks.try_lock(service, holder).await
    }

    async fn lock_holder(&self, service: &str) -> Result<Option<LockHolder>, RegistryError> {
        self.locks.lock_holder(service).await
    }

    async fn force_unlock(&self, service: &str) -> Result<bool, RegistryError> {
        self.locks.force_unlock(service).await
    }
}

impl Registry for EmbeddedRegistry {
    fn identity(&self) -> String {
        self.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A call whose caller gave up (a host-call timeout) while an earlier
    /// call held the connection never runs: no write lands after its caller
    /// was told it timed out, and calls run in the order they were made.
    #[tokio::test]
    async fn a_call_abandoned_while_waiting_never_runs() {
        let reg = EmbeddedRegistry::in_memory(Duration::from_secs(5)).unwrap();
        let held = Arc::clone(&reg.store.conn).lock_owned().await;
        let put = tokio::time::timeout(
            Duration::from_millis(50),
            reg.kv_put("svc/journal", b"stale"),
        )
        .await;
        assert!(put.is_err(), "the put waits for the connection");
        drop(held);
        assert_eq!(reg.kv_get("svc/journal").await.unwrap(), None);
        reg.kv_put("svc/journal", b"fresh").await.unwrap();
        let entry = reg.kv_get("svc/journal").await.unwrap().unwrap();
        assert_eq!(entry.value, b"fresh");
    }

    /// A state directory an older runner wrote (instances with only
    /// `healthy`) opens: the new columns are added, the status comes from
    /// `healthy`, the node is this machine; and `healthy` is still written,
    /// for an older runner sharing the directory.
    #[tokio::test]
    async fn an_older_catalog_is_read_and_kept_readable() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("registry.sqlite3");
        let old = Connection::open(&db).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        old.execute(
            "INSERT INTO instances (service, id, address, port, tags, healthy)
             VALUES ('web', 'w1', '127.0.0.1', 8080, '[\"v1\"]', 0)",
            [],
        )
        .unwrap();
        drop(old);
        let reg = EmbeddedRegistry::open(dir.path(), Duration::from_secs(5)).unwrap();
        let [w1] = &reg.instances("web").await.unwrap()[..] else {
            panic!("one instance")
        };
        assert_eq!(w1.status, Health::Critical);
        assert_eq!(w1.node, super::super::this_host());
        assert_eq!(w1.checks[0].status, "critical");
        let mut warning = w1.clone();
        warning.status = Health::Warning;
        warning.meta.insert("role".into(), "primary".into());
        reg.register(&warning).await.unwrap();
        let read = &reg.instances("web").await.unwrap()[0];
        assert_eq!((read.status, read.meta.len()), (Health::Warning, 1));
        let healthy: bool = Connection::open(&db)
            .unwrap()
            .query_row("SELECT healthy FROM instances", [], |r| r.get(0))
            .unwrap();
        assert!(!healthy, "warning is not healthy for an older reader");
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

    /// Two in-memory stores share nothing, and one's scratch directory (its
    /// lock files) goes with it.
    #[tokio::test]
    async fn in_memory_stores_are_private_and_leave_nothing_behind() {
        let a = EmbeddedRegistry::in_memory(Duration::from_secs(5)).unwrap();
        let b = EmbeddedRegistry::in_memory(Duration::from_secs(5)).unwrap();
        a.kv_put("svc/color", b"blue").await.unwrap();
        assert_eq!(b.kv_get("svc/color").await.unwrap(), None);
        assert_ne!(a.identity(), b.identity());
        let scratch = a._scratch.as_ref().unwrap().path().to_path_buf();
        let holder = LockHolder {
            host: "h".into(),
            pid: 1,
            user: "u".into(),
            version: "v".into(),
            stage: "s".into(),
            started_at: "t".into(),
        };
        let LockAttempt::Acquired(guard) = a.try_lock("svc", &holder).await.unwrap() else {
            panic!("a fresh store's lock is free")
        };
        assert!(scratch.join("locks/svc.lock").exists());
        guard.release().await.unwrap();
        drop(a);
        assert!(
            !scratch.exists(),
            "{} outlived its store",
            scratch.display()
        );
    }

    /// A panic on the blocking thread reaches the caller as an error; the
    /// host keeps running.
    #[tokio::test]
    async fn a_panicking_call_is_an_error_not_a_host_panic() {
        let reg = EmbeddedRegistry::in_memory(Duration::from_secs(5)).unwrap();
        let outcome: Result<(), _> = reg.with_conn(|_| panic!("boom")).await;
        let Err(RegistryError::Backend(message)) = outcome else {
            panic!("expected a backend error, got {outcome:?}")
        };
        assert_eq!(message, ":memory:: the registry call panicked");
    }
}
