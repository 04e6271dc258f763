//! The registry contract: what every backend promises behind `dyn Registry`
//! (KV with Consul's index semantics, the catalog, watches, deploy locks),
//! written once and run against each backend: the embedded store on disk,
//! opened lazily, in memory, and Consul (through the API-faithful test server
//! in `tests/common/consul.rs`). What only one backend does (Consul's ACL
//! token, health checks, path resolution and index resets; the embedded
//! store's lock files) is tested beside that backend.

use crate::common::consul::ConsulServer;
use runner::registry::{
    Dependency, EmbeddedRegistry, Instance, LazyRegistry, LockAttempt, LockHolder, Registry,
    RegistryError,
};
use std::time::{Duration, Instant};

/// A backend under test, and what keeps it alive (its directory, its server).
pub struct Backend {
    pub registry: Box<dyn Registry>,
    _keep: Box<dyn std::any::Any>,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = EmbeddedRegistry::open(dir.path(), BUSY_TIMEOUT).expect("embedded registry");
    Backend {
        registry: Box::new(registry),
        _keep: Box::new(dir),
    }
}

fn lazy_embedded() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = LazyRegistry::new(dir.path().join("state"), BUSY_TIMEOUT);
    Backend {
        registry: Box::new(registry),
        _keep: Box::new(dir),
    }
}

fn embedded_in_memory() -> Backend {
    Backend {
        registry: Box::new(EmbeddedRegistry::in_memory(BUSY_TIMEOUT).expect("in-memory registry")),
        _keep: Box::new(()),
    }
}

fn consul() -> Backend {
    let server = ConsulServer::start(None);
    Backend {
        registry: Box::new(server.registry()),
        _keep: Box::new(server),
    }
}

/// `#[tokio::test]`s running each contract function against each backend:
/// `registry::contract::<backend>::<contract function>`.
macro_rules! contract_suite {
    (backends: [$($backend:ident),* $(,)?], contract: $tests:tt) => {
        $( contract_suite!(@backend $backend $tests); )*
    };
    (@backend $backend:ident [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    let backend = super::$backend();
                    super::$test(&*backend.registry).await;
                }
            )*
        }
    };
}

contract_suite! {
    backends: [embedded, lazy_embedded, embedded_in_memory, consul],
    contract: [
        kv_round_trips_values_with_increasing_indexes,
        cas_writes_only_at_the_expected_index,
        a_listing_is_prefix_scoped_and_sorted,
        the_catalog_registers_replaces_and_deregisters,
        an_instance_id_of_another_service_is_refused,
        a_watch_answers_at_once_from_index_zero_and_waits_out_an_unchanged_index,
        a_write_wakes_a_watch_early,
        a_deploy_lock_is_exclusive_until_released,
    ]
}

/// What was registered of each instance; the node and its checks are the
/// backend's (the Consul agent's node, the embedded store's host).
fn registered(instances: Vec<Instance>) -> Vec<Instance> {
    instances
        .into_iter()
        .map(|i| Instance {
            node: String::new(),
            node_address: String::new(),
            checks: Vec::new(),
            ..i
        })
        .collect()
}

fn instance(name: &str, id: &str, port: u16) -> Instance {
    Instance {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec!["v1".into()],
        ..Instance::default()
    }
}

/// The backend's current index: a watch from 0 answers at once with it.
async fn current_index(registry: &dyn Registry) -> u64 {
    registry
        .wait_for_change(&Dependency::Services, 0, Duration::ZERO)
        .await
        .expect("current index")
}

async fn kv_round_trips_values_with_increasing_indexes(registry: &dyn Registry) {
    assert_eq!(registry.kv_get("app/bin").await.unwrap(), None);
    let bytes = vec![0u8, 255, 10, 13, 34, 92];
    let i1 = registry.kv_put("app/bin", &bytes).await.unwrap();
    let i2 = registry.kv_put("app/bin", &bytes).await.unwrap();
    assert!(i2 > i1, "{i1} then {i2}");
    let entry = registry.kv_get("app/bin").await.unwrap().unwrap();
    assert_eq!(
        (
            entry.key,
            entry.value,
            entry.create_index,
            entry.modify_index
        ),
        ("app/bin".to_string(), bytes, i1, i2)
    );
    registry.kv_put("app/empty", b"").await.unwrap();
    assert_eq!(
        registry.kv_get("app/empty").await.unwrap().unwrap().value,
        b""
    );
}

async fn cas_writes_only_at_the_expected_index(registry: &dyn Registry) {
    assert!(
        registry.kv_cas("k/v", b"1", 0).await.unwrap(),
        "0 creates an absent key"
    );
    assert!(
        !registry.kv_cas("k/v", b"2", 0).await.unwrap(),
        "0 only creates"
    );
    let index = registry.kv_get("k/v").await.unwrap().unwrap().modify_index;
    assert!(
        !registry.kv_cas("k/v", b"2", index + 100).await.unwrap(),
        "a wrong index"
    );
    assert_eq!(registry.kv_get("k/v").await.unwrap().unwrap().value, b"1");
    assert!(registry.kv_cas("k/v", b"2", index).await.unwrap());
    assert!(
        !registry.kv_cas("k/v", b"3", index).await.unwrap(),
        "a stale index"
    );
    assert_eq!(registry.kv_get("k/v").await.unwrap().unwrap().value, b"2");
    assert!(
        !registry.kv_cas("k/new", b"x", 7).await.unwrap(),
        "an index on an absent key"
    );
    assert_eq!(registry.kv_get("k/new").await.unwrap(), None);
}

async fn a_listing_is_prefix_scoped_and_sorted(registry: &dyn Registry) {
    for key in ["app/b", "app/a", "apple", "app/c/d", "other"] {
        registry.kv_put(key, key.as_bytes()).await.unwrap();
    }
    let listed = |prefix: &'static str| async move {
        registry
            .kv_list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                assert_eq!(e.value, e.key.as_bytes(), "{}'s value", e.key);
                e.key
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(listed("app/").await, ["app/a", "app/b", "app/c/d"]);
    assert!(listed("none/").await.is_empty());
    assert!(registry.kv_delete("app/a").await.unwrap());
    assert!(!registry.kv_delete("app/a").await.unwrap(), "already gone");
    assert_eq!(listed("app/").await, ["app/b", "app/c/d"]);
}

async fn the_catalog_registers_replaces_and_deregisters(registry: &dyn Registry) {
    let mut blue = instance("books-ms-blue", "runner:books-ms-blue:8080", 32769);
    let second = instance("books-ms-blue", "runner:books-ms-blue:8081", 32771);
    registry.register(&second).await.unwrap();
    registry.register(&blue).await.unwrap();
    blue.port = 32770;
    registry.register(&blue).await.unwrap();
    assert_eq!(
        registered(registry.instances("books-ms-blue").await.unwrap()),
        registered(vec![blue.clone(), second.clone()]),
        "replaced in place, sorted by ID"
    );
    assert_eq!(registry.services().await.unwrap(), ["books-ms-blue"]);
    assert!(
        registry
            .instances("books-ms-green")
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        !registry
            .deregister("books-ms-green", &blue.id)
            .await
            .unwrap(),
        "another service's instance"
    );
    assert!(
        registry
            .deregister("books-ms-blue", &blue.id)
            .await
            .unwrap()
    );
    assert!(
        !registry
            .deregister("books-ms-blue", &blue.id)
            .await
            .unwrap()
    );
    assert_eq!(
        registered(registry.instances("books-ms-blue").await.unwrap()),
        registered(vec![second.clone()])
    );
    assert!(
        registry
            .deregister("books-ms-blue", &second.id)
            .await
            .unwrap()
    );
    assert!(
        registry
            .instances("books-ms-blue")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(registry.services().await.unwrap().is_empty());
}

async fn an_instance_id_of_another_service_is_refused(registry: &dyn Registry) {
    let payments = instance("payments", "pay-1", 9000);
    registry.register(&payments).await.unwrap();
    let hijack = Instance {
        name: "books-ms".into(),
        port: 6666,
        ..payments.clone()
    };
    let before = current_index(registry).await;
    let Err(RegistryError::Conflict(message)) = registry.register(&hijack).await else {
        panic!("registering another service's ID must be refused")
    };
    assert_eq!(
        message,
        "instance ID \"pay-1\" belongs to service \"payments\"; pick another ID"
    );
    assert_eq!(
        registered(registry.instances("payments").await.unwrap()),
        registered(vec![payments])
    );
    assert!(registry.instances("books-ms").await.unwrap().is_empty());
    assert_eq!(
        current_index(registry).await,
        before,
        "a refused write changes nothing a watcher sees"
    );
    assert!(!registry.deregister("books-ms", "pay-1").await.unwrap());
}

async fn a_watch_answers_at_once_from_index_zero_and_waits_out_an_unchanged_index(
    registry: &dyn Registry,
) {
    let written = registry.kv_put("app/color", b"blue").await.unwrap();
    let key = Dependency::Key("app/color".into());
    let now = tokio::time::timeout(
        Duration::from_secs(10),
        registry.wait_for_change(&key, 0, Duration::from_secs(60)),
    )
    .await
    .expect("a watch from index 0 answers at once")
    .unwrap();
    assert!(now >= written, "{now} is before the write at {written}");

    let asked = Instant::now();
    let same = registry
        .wait_for_change(&key, now, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(same, now, "nothing changed");
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "answered after {:?}, before its wait ended",
        asked.elapsed()
    );
}

/// Whether the write lands before or after the watch reaches the backend,
/// the watch answers a newer index long before its 60 s wait ends.
async fn a_write_wakes_a_watch_early(registry: &dyn Registry) {
    let writes: [(Dependency, &str); 4] = [
        (Dependency::Key("app/color".into()), "a write of the key"),
        (
            Dependency::Prefix("app/".into()),
            "a write under the prefix",
        ),
        (Dependency::Service("web".into()), "a registration"),
        (Dependency::Services, "a new service"),
    ];
    for (round, (dep, change)) in writes.iter().enumerate() {
        let from = current_index(registry).await;
        let write = async {
            match dep {
                Dependency::Key(key) => registry.kv_put(key, b"green").await.map(drop),
                Dependency::Prefix(prefix) => registry
                    .kv_put(&format!("{prefix}new"), b"x")
                    .await
                    .map(drop),
                Dependency::Service(name) => {
                    registry.register(&instance(name, "web-1", 8080)).await
                }
                Dependency::Services => {
                    let name = format!("service-{round}");
                    registry.register(&instance(&name, &name, 8080)).await
                }
            }
        };
        let watch = registry.wait_for_change(dep, from, Duration::from_secs(60));
        let (woke, written) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(watch, write)
        })
        .await
        .unwrap_or_else(|_| panic!("{change} did not wake the watch on {dep}"));
        written.unwrap();
        let woke = woke.unwrap();
        assert!(woke > from, "{change}: {from} then {woke}");
    }
}

async fn a_deploy_lock_is_exclusive_until_released(registry: &dyn Registry) {
    let holder = holder();
    assert_eq!(registry.lock_holder("books-ms").await.unwrap(), None);
    assert!(
        !registry.force_unlock("books-ms").await.unwrap(),
        "nothing to break"
    );
    let LockAttempt::Acquired(guard) = registry.try_lock("books-ms", &holder).await.unwrap() else {
        panic!("a free lock is taken")
    };
    assert_eq!(
        registry.lock_holder("books-ms").await.unwrap().as_ref(),
        Some(&holder)
    );
    let other = LockHolder {
        pid: 1,
        ..holder.clone()
    };
    match registry.try_lock("books-ms", &other).await.unwrap() {
        LockAttempt::Held(by) => assert_eq!(by.as_ref(), Some(&holder), "names the holder"),
        LockAttempt::Acquired(_) => panic!("a held lock was taken twice"),
    }
    let LockAttempt::Acquired(payments) = registry.try_lock("payments", &other).await.unwrap()
    else {
        panic!("another service's lock is independent")
    };
    guard.release().await.unwrap();
    assert_eq!(registry.lock_holder("books-ms").await.unwrap(), None);
    let LockAttempt::Acquired(again) = registry.try_lock("books-ms", &other).await.unwrap() else {
        panic!("a released lock is free")
    };
    again.release().await.unwrap();
    payments.release().await.unwrap();
}

/// The holder every lock test takes the lock as.
pub(crate) fn holder() -> LockHolder {
    LockHolder {
        host: "build-1".into(),
        pid: 4242,
        user: "deployer".into(),
        version: "0.1.0".into(),
        stage: "bluegreen".into(),
        started_at: "2024-01-01T00:00:00Z".into(),
    }
}
