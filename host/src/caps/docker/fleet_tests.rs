//! The fleet over in-memory engines: placement, fleet-wide names, routing
//! by name and ID, addresses, images everywhere, errors naming the host.

use super::*;
use crate::caps::docker::Restart;
use crate::caps::docker::fake::FakeEngine;

struct Fleet {
    fleet: FleetEngine,
    members: Vec<Arc<FakeEngine>>,
}

fn fleet(names: &[&str]) -> Fleet {
    let members: Vec<Arc<FakeEngine>> = (0..names.len())
        .map(|i| Arc::new(FakeEngine::new().with_id_base(i as u64 + 1)))
        .collect();
    let hosts = names
        .iter()
        .zip(&members)
        .enumerate()
        .map(|(i, (name, engine))| FleetHost {
            name: name.to_string(),
            address: format!("10.0.0.{}", i + 1),
            publish_ip: format!("10.0.0.{}", i + 1),
            timeout: Duration::from_secs(5),
            engine: engine.clone(),
        })
        .collect();
    Fleet {
        fleet: FleetEngine::new(hosts),
        members,
    }
}

fn spec(name: &str, service: &str, hosts: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "app:v1".into(),
        env: vec![],
        command: None,
        labels: HashMap::from([(LABEL_SERVICE.to_string(), service.to_string())]),
        ports: vec![8080],
        publish_ip: "127.0.0.1".into(),
        memory_bytes: 1 << 30,
        pids: 1024,
        nano_cpus: None,
        restart: Restart::No,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    }
}

impl Fleet {
    fn with_image(self, image: &str) -> Self {
        for m in &self.members {
            m.add_image(image);
        }
        self
    }

    /// Which member holds each container, by name.
    fn placement(&self) -> Vec<(String, usize)> {
        let mut all: Vec<(String, usize)> = self
            .members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.containers().into_iter().map(move |c| (c.name, i)))
            .collect();
        all.sort();
        all
    }
}

#[tokio::test]
async fn replicas_spread_over_the_allowed_hosts_and_in_flight_placements_count() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    // Side by side, as run-all does: each placement sees the ones before it.
    let created = join_all((1..=3).map(|i| {
        f.fleet
            .create(spec(&format!("app-blue-{i}"), "app-blue", &["a", "b"]))
    }))
    .await;
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let on_a = f.placement().iter().filter(|(_, h)| *h == 0).count();
    assert_eq!((on_a, f.placement().len()), (2, 3), "{:?}", f.placement());
    // Another service spreads by its own count, then by all containers.
    f.fleet
        .create(spec("app-green-1", "app-green", &["a", "b"]))
        .await
        .unwrap();
    assert!(f.placement().contains(&("app-green-1".into(), 1)));
    // A spec allowed on one host goes there whatever the load.
    f.fleet
        .create(spec("app-blue-4", "app-blue", &["a"]))
        .await
        .unwrap();
    assert!(f.placement().contains(&("app-blue-4".into(), 0)));
    let none = f.fleet.create(spec("x", "app", &[])).await.unwrap_err();
    assert!(
        none.to_string().contains("no host to place \"x\""),
        "{none}"
    );
}

#[tokio::test]
async fn a_name_is_one_container_across_the_hosts() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    f.fleet
        .create(spec("app-blue", "app", &["a"]))
        .await
        .unwrap();
    let e = f
        .fleet
        .create(spec("app-blue", "app", &["b"]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EngineError::Conflict(m) if m.contains("already in use on host a")),
        "{e:?}"
    );
    assert_eq!(f.members[1].containers().len(), 0);
}

#[tokio::test]
async fn calls_reach_the_host_of_the_container_by_name_or_id() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    let id = f
        .fleet
        .create(spec("app-blue", "app", &["b"]))
        .await
        .unwrap();
    f.fleet.start(&id).await.unwrap();
    let info = f.fleet.inspect("app-blue").await.unwrap();
    assert_eq!((info.host.as_str(), info.id.as_str()), ("b", id.as_str()));
    // Published on b's IP, reported at b's address.
    assert_eq!(info.ports[0].host_ip, "10.0.0.2");
    assert!(f.members[0].calls().iter().all(|c| !c.starts_with("start")));
    f.fleet.stop(&id, 1).await.unwrap();
    f.fleet.remove("app-blue", true).await.unwrap();
    assert!(f.members[1].containers().is_empty());
    let gone = f.fleet.inspect(&id).await.unwrap_err();
    assert!(matches!(gone, EngineError::NotFound(_)), "{gone:?}");
}

#[tokio::test]
async fn containers_made_elsewhere_are_found_and_listed_with_their_host() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    f.fleet.connect().await.unwrap();
    // Created behind the fleet's back after its index was read.
    let id = f.members[1]
        .create(spec("other", "other", &[]))
        .await
        .unwrap();
    f.members[1].start(&id).await.unwrap();
    assert_eq!(f.fleet.inspect("other").await.unwrap().host, "b");
    let listed = f.fleet.list(ListFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].host, "b");
    assert!(listed[0].ports[0].starts_with("10.0.0.2:"), "{listed:?}");
}

#[tokio::test]
async fn one_image_everywhere_or_a_refusal_naming_the_hosts() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    assert!(f.fleet.inspect_image("app:v1").await.is_ok());
    f.members[0].add_image("app:v2");
    let missing = f.fleet.inspect_image("app:v2").await.unwrap_err();
    assert!(missing.to_string().starts_with("host b: "), "{missing}");
    // Two images under one name: two versions would run under one tag.
    f.members[1].add_image("other:v2");
    let id = f.members[1]
        .inspect_image("other:v2")
        .await
        .unwrap()
        .id
        .unwrap();
    f.members[1].tag(&id, "app", "v2").await.unwrap();
    let differs = f.fleet.inspect_image("app:v2").await.unwrap_err();
    assert!(
        differs.to_string().contains("differs between host a"),
        "{differs}"
    );
}

#[tokio::test]
async fn a_failing_host_fails_the_preflight_and_is_named() {
    let f = fleet(&["a", "b"]).with_image("app:v1");
    f.members[1].fail(
        "list",
        EngineError::Unavailable {
            endpoint: "tcp://b:2375".into(),
            reason: "connection refused".into(),
        },
    );
    let e = f.fleet.connect().await.unwrap_err();
    let plugin = e.to_plugin_error("run", "app-blue");
    assert!(
        matches!(&plugin, crate::bindings::PluginError::Unavailable(m)
            if m.contains("host b: cannot reach the engine at tcp://b:2375")),
        "{plugin:?}"
    );
    // Nothing was created anywhere.
    assert!(
        f.fleet
            .create(spec("app-blue", "app", &["a", "b"]))
            .await
            .is_err()
    );
    assert!(f.members[0].containers().is_empty());
}

/// An engine that never answers: a host that stopped mid-deploy.
struct Hung;

#[async_trait::async_trait]
impl ContainerEngine for Hung {
    fn host(&self) -> &str {
        "tcp://hung:2375"
    }
    async fn connect(&self) -> Result<(), EngineError> {
        Ok(())
    }
    async fn pull(&self, _: &str) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn build(&self, _: BuildSpec, _: Vec<u8>) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn tag(&self, _: &str, _: &str, _: &str) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn push(&self, _: &str, _: Option<&str>) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn inspect_image(&self, _: &str) -> Result<ImageInfo, EngineError> {
        std::future::pending().await
    }
    async fn create(&self, _: ContainerSpec) -> Result<String, EngineError> {
        std::future::pending().await
    }
    async fn start(&self, _: &str) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn stop(&self, _: &str, _: u32) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn remove(&self, _: &str, _: bool) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn kill(&self, _: &str, _: &str) -> Result<(), EngineError> {
        std::future::pending().await
    }
    async fn inspect(&self, _: &str) -> Result<ContainerInfo, EngineError> {
        std::future::pending().await
    }
    async fn list(&self, _: ListFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        std::future::pending().await
    }
    async fn wait(&self, _: &str) -> Result<Option<i64>, EngineError> {
        std::future::pending().await
    }
    async fn logs(&self, _: &str, _: u32, _: usize) -> Result<String, EngineError> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_host_that_stops_answering_times_out_by_name() {
    let a = Arc::new(FakeEngine::new());
    let hosts = vec![
        FleetHost {
            name: "a".into(),
            address: "127.0.0.1".into(),
            publish_ip: "127.0.0.1".into(),
            timeout: Duration::from_secs(5),
            engine: a,
        },
        FleetHost {
            name: "b".into(),
            address: "127.0.0.1".into(),
            publish_ip: "127.0.0.1".into(),
            timeout: Duration::from_millis(300),
            engine: Arc::new(Hung),
        },
    ];
    let fleet = FleetEngine::new(hosts);
    let e = fleet.connect().await.unwrap_err();
    assert!(
        e.to_string().starts_with(
            "host b: cannot reach the engine at tcp://hung:2375: no answer within 300ms"
        ),
        "{e}"
    );
}
