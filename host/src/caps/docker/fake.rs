//! An in-memory [`ContainerEngine`], for tests: it records every call and
//! holds containers and images in a map, so the `docker` capability, its
//! registration and `reconcile` can be exercised in-process without Docker.
//! Not for production use: nothing runs.

use super::engine::{
    BuildSpec, ContainerEngine, ContainerInfo, ContainerSpec, ContainerSummary, EngineError,
    ImageInfo, ListFilter, PublishedPort,
};
use super::registration::AddressPolicy;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// First host port the fake publishes on (Docker's ephemeral range).
const FIRST_HOST_PORT: u16 = 32768;

#[derive(Default)]
struct Container {
    info: ContainerInfo,
    /// What to publish when started.
    ports: Vec<u16>,
    publish_ip: String,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    images: Vec<ImageInfo>,
    calls: Vec<String>,
    failures: HashMap<&'static str, EngineError>,
    next_id: u64,
    next_port: u16,
}

/// See the module documentation.
#[derive(Default)]
pub struct FakeEngine {
    state: Mutex<State>,
    address: AddressPolicy,
    /// The first 16 hex digits of every ID, so fakes in one fleet give
    /// different IDs, as real engines do.
    id_base: u64,
}

impl FakeEngine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_address_policy(mut self, address: AddressPolicy) -> Self {
        self.address = address;
        self
    }

    /// IDs starting with `base` (16 hex digits): one base per fake of a fleet.
    pub fn with_id_base(mut self, base: u64) -> Self {
        self.id_base = base;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Add a local image named `reference` (`name` means `name:latest`); its ID.
    pub fn add_image(&self, reference: &str) -> String {
        let mut state = self.state();
        add_image(&mut state, reference)
    }

    /// Every call so far, as `OP TARGET` (`create books-ms-blue`).
    pub fn calls(&self) -> Vec<String> {
        self.state().calls.clone()
    }

    /// Every container, by name.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        let mut list: Vec<ContainerInfo> = self
            .state()
            .containers
            .values()
            .map(|c| c.info.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Make every later call of `op` (`inspect`, `create`, …) fail with `error`.
    pub fn fail(&self, op: &'static str, error: EngineError) {
        self.state().failures.insert(op, error);
    }

    /// Record the call; the failure set for `op`, if any.
    fn call(&self, op: &'static str, target: &str) -> Result<MutexGuard<'_, State>, EngineError> {
        let mut state = self.state();
        state.calls.push(format!("{op} {target}"));
        match state.failures.get(op) {
            Some(error) => Err(error.clone()),
            None => Ok(state),
        }
    }
}

fn tagged(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || reference.contains('@') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

fn add_image(state: &mut State, reference: &str) -> String {
    let name = tagged(reference);
    if let Some(image) = state.images.iter().find(|i| i.repo_tags.contains(&name)) {
        return image.id.clone().unwrap_or_default();
    }
    // From the name, as one image loaded on several engines has one ID.
    let id = format!("sha256:{:064x}", fnv1a(&name));
    state.images.push(ImageInfo {
        id: Some(id.clone()),
        repo_tags: vec![name],
        repo_digests: Vec::new(),
    });
    id
}

fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Like the engine: an ID, a name, or a unique ID prefix.
fn find<'a>(state: &'a mut State, key: &str) -> Result<&'a mut Container, EngineError> {
    let id = state
        .containers
        .values()
        .find(|c| c.info.id == key || c.info.name == key)
        .or_else(|| {
            let mut prefixed = state
                .containers
                .values()
                .filter(|c| !key.is_empty() && c.info.id.starts_with(key));
            prefixed.next().filter(|_| prefixed.next().is_none())
        })
        .map(|c| c.info.id.clone());
    id.and_then(|id| state.containers.get_mut(&id))
        .ok_or_else(|| EngineError::NotFound(format!("No such container: {key}")))
}

fn stopped(container: &mut Container, exit_code: i64) {
    container.info.running = false;
    container.info.state = "exited".into();
    container.info.exit_code = Some(exit_code);
    container.info.ports.clear();
}

#[async_trait::async_trait]
impl ContainerEngine for FakeEngine {
    fn host(&self) -> &str {
        "fake://engine"
    }

    fn address_policy(&self) -> AddressPolicy {
        self.address.clone()
    }

    async fn connect(&self) -> Result<(), EngineError> {
        self.call("connect", "").map(|_| ())
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        let mut state = self.call("pull", image)?;
        add_image(&mut state, image);
        Ok(())
    }

    async fn build(&self, spec: BuildSpec, _context: Vec<u8>) -> Result<(), EngineError> {
        let mut state = self.call("build", &spec.tag)?;
        add_image(&mut state, &spec.tag);
        Ok(())
    }

    async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let mut state = self.call("tag", source)?;
        let image = state
            .images
            .iter_mut()
            .find(|i| i.id.as_deref() == Some(source))
            .ok_or_else(|| EngineError::NotFound(format!("No such image: {source}")))?;
        image.repo_tags.push(format!("{repo}:{tag}"));
        Ok(())
    }

    async fn push(&self, name: &str, tag: Option<&str>) -> Result<(), EngineError> {
        let reference = match tag {
            Some(tag) => format!("{name}:{tag}"),
            None => name.to_string(),
        };
        let state = self.call("push", &reference)?;
        let reference = tagged(&reference);
        if state
            .images
            .iter()
            .any(|i| i.repo_tags.contains(&reference))
        {
            Ok(())
        } else {
            Err(EngineError::NotFound(format!(
                "An image does not exist locally with the tag: {name}"
            )))
        }
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        let state = self.call("inspect_image", reference)?;
        let name = tagged(reference);
        state
            .images
            .iter()
            .find(|i| {
                i.id.as_deref() == Some(reference)
                    || i.repo_tags.contains(&name)
                    || i.repo_digests.iter().any(|d| d == reference)
            })
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such image: {reference}")))
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String, EngineError> {
        let mut state = self.call("create", &spec.name)?;
        if state.containers.values().any(|c| c.info.name == spec.name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{}\" is already in use",
                spec.name
            )));
        }
        let name = tagged(&spec.image);
        if !state.images.iter().any(|i| i.repo_tags.contains(&name)) {
            return Err(EngineError::NotFound(format!(
                "No such image: {}",
                spec.image
            )));
        }
        state.next_id += 1;
        let id = format!("{:016x}{:048x}", self.id_base, state.next_id);
        let container = Container {
            info: ContainerInfo {
                id: id.clone(),
                name: spec.name,
                image: spec.image,
                state: "created".into(),
                labels: spec.labels,
                ..Default::default()
            },
            ports: spec.ports,
            publish_ip: spec.publish_ip,
        };
        state.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        let mut guard = self.call("start", id)?;
        let state = &mut *guard;
        let mut next_port = state.next_port;
        let container = find(state, id)?;
        if !container.info.running {
            container.info.running = true;
            container.info.state = "running".into();
            container.info.exit_code = None;
            container.info.ports = container
                .ports
                .iter()
                .map(|&container_port| {
                    next_port += 1;
                    PublishedPort {
                        container_port,
                        host_ip: container.publish_ip.clone(),
                        host_port: FIRST_HOST_PORT + next_port,
                    }
                })
                .collect();
        }
        state.next_port = next_port;
        Ok(())
    }

    async fn stop(&self, id: &str, _timeout_secs: u32) -> Result<(), EngineError> {
        let mut state = self.call("stop", id)?;
        let container = find(&mut state, id)?;
        if container.info.running {
            stopped(container, 0);
        }
        Ok(())
    }

    async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError> {
        let mut state = self.call("remove", id)?;
        let container = find(&mut state, id)?;
        if container.info.running && !force {
            return Err(EngineError::Conflict(format!(
                "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                container.info.name
            )));
        }
        let id = container.info.id.clone();
        state.containers.remove(&id);
        Ok(())
    }

    /// `HUP` is taken (a reload); any other signal ends the container.
    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        let mut state = self.call("kill", id)?;
        let container = find(&mut state, id)?;
        if !container.info.running {
            return Err(EngineError::Conflict(format!(
                "container {id} is not running"
            )));
        }
        if !matches!(signal, "HUP" | "SIGHUP") {
            stopped(container, 137);
        }
        Ok(())
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let mut state = self.call("inspect", id)?;
        find(&mut state, id).map(|c| c.info.clone())
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        let state = self.call("list", filter.label.as_deref().unwrap_or(""))?;
        let labelled = |info: &ContainerInfo| match filter.label.as_deref() {
            None => true,
            Some(label) => match label.split_once('=') {
                Some((key, value)) => info.labels.get(key).map(String::as_str) == Some(value),
                None => info.labels.contains_key(label),
            },
        };
        Ok(state
            .containers
            .values()
            .map(|c| &c.info)
            .filter(|info| filter.all || info.running)
            .filter(|info| labelled(info))
            .filter(|info| {
                filter
                    .name_prefix
                    .as_deref()
                    .is_none_or(|p| info.name.starts_with(p))
            })
            .map(|info| ContainerSummary {
                host: String::new(),
                service: info
                    .labels
                    .get(super::registration::LABEL_SERVICE)
                    .cloned()
                    .unwrap_or_default(),
                id: info.id.clone(),
                name: info.name.clone(),
                image: info.image.clone(),
                state: info.state.clone(),
                ports: info
                    .ports
                    .iter()
                    .map(|p| format!("{}:{}", p.host_ip, p.host_port))
                    .collect(),
            })
            .collect())
    }

    /// A running fake container never stops by itself: the wait lasts
    /// until the caller's timeout.
    async fn wait(&self, id: &str) -> Result<Option<i64>, EngineError> {
        let exit = {
            let mut state = self.call("wait", id)?;
            let container = find(&mut state, id)?;
            (!container.info.running).then_some(container.info.exit_code)
        };
        match exit {
            Some(code) => Ok(code),
            None => std::future::pending().await,
        }
    }

    async fn logs(&self, id: &str, _tail: u32, _max_bytes: usize) -> Result<String, EngineError> {
        let mut state = self.call("logs", id)?;
        find(&mut state, id).map(|_| String::new())
    }
}
