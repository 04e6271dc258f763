//! [`ContainerEngine`] over several named Docker hosts (`[hosts.NAME]` in a
//! runner file): each host is one engine of its own; the fleet places new
//! containers on them, finds existing ones wherever they run, and answers
//! for all of them as one engine.
//!
//! - **Placement.** A container goes to one of the hosts its spec allows
//!   (granted, or the one a stage pinned it to): the one running the fewest
//!   containers of the same service, then the fewest containers, then the
//!   first in the runner file's order. Placements in flight count, so the
//!   replicas of one `run-all` spread.
//! - **Names are fleet-wide.** Docker keeps names unique per engine; the
//!   fleet refuses a name another host already uses, so a name always
//!   means one container.
//! - **Where things are** is an index of every container's host, by ID and
//!   by name, read from every host on connect (the preflight: every host
//!   must answer before anything starts) and kept by the calls that create
//!   and remove. A name or ID the index lacks is looked up on every host
//!   once before it is reported missing.
//! - **Addresses.** A container's ports are published on its host's
//!   `publish` IP and reported (and registered) at its host's `address`.
//! - **Images** are the same on every host or not at all: an image is
//!   pulled and built on every host, and a name whose image differs between
//!   hosts is refused (that would run two versions under one tag).
//! - **Every host call is bounded** by the host's own timeout and its
//!   errors name the host: a host that stops answering mid-deploy fails
//!   the call that met it, not the whole process.

use super::engine::{
    BuildSpec, ContainerEngine, ContainerInfo, ContainerSpec, ContainerSummary, EngineError,
    HostInfo, ImageInfo, ListFilter,
};
use super::registration::{AddressPolicy, LABEL_SERVICE};
use futures_util::future::join_all;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One named host of a fleet.
pub struct FleetHost {
    pub name: String,
    /// Where its published ports are reached (the proxy, health checks).
    pub address: String,
    /// The IP its containers' ports are published on, on the host itself.
    pub publish_ip: String,
    /// Every call to it that is not an image transfer or a wait ends within this.
    pub timeout: Duration,
    pub engine: Arc<dyn ContainerEngine>,
}

/// See the module documentation.
pub struct FleetEngine {
    hosts: Vec<FleetHost>,
    description: String,
    index: Mutex<Index>,
    connected: tokio::sync::OnceCell<()>,
}

/// Where each known container runs.
#[derive(Default)]
struct Index {
    /// By container ID.
    by_id: HashMap<String, Placed>,
    /// Container name → ID.
    by_name: HashMap<String, String>,
    /// Names placed but not created yet: (host, service).
    pending: HashMap<String, (usize, String)>,
}

#[derive(Clone)]
struct Placed {
    host: usize,
    name: String,
    service: String,
}

impl Index {
    fn insert(&mut self, id: String, placed: Placed) {
        self.by_name.insert(placed.name.clone(), id.clone());
        self.by_id.insert(id, placed);
    }

    fn forget(&mut self, id: &str) {
        if let Some(placed) = self.by_id.remove(id)
            && self.by_name.get(&placed.name).map(String::as_str) == Some(id)
        {
            self.by_name.remove(&placed.name);
        }
    }

    /// The host of an ID, a name, or a unique ID prefix (as the engine takes).
    fn host_of(&self, key: &str) -> Option<usize> {
        if let Some(placed) = self.by_id.get(key) {
            return Some(placed.host);
        }
        if let Some(id) = self.by_name.get(key) {
            return self.by_id.get(id).map(|p| p.host);
        }
        let mut prefixed = self
            .by_id
            .iter()
            .filter(|(id, _)| key.len() >= 12 && id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some((_, placed)), None) => Some(placed.host),
            _ => None,
        }
    }

    /// Containers (and pending placements) of `service`, and of any service, on `host`.
    fn load(&self, host: usize, service: &str) -> (usize, usize) {
        let placed = self
            .by_id
            .values()
            .map(|p| (p.host, p.service.as_str()))
            .chain(self.pending.values().map(|(h, s)| (*h, s.as_str())));
        placed
            .filter(|(h, _)| *h == host)
            .fold((0, 0), |(same, all), (_, s)| {
                (
                    same + usize::from(!service.is_empty() && s == service),
                    all + 1,
                )
            })
    }
}

impl FleetEngine {
    /// A fleet of `hosts` (at least one, names unique: the runner file's
    /// loader checks both).
    pub fn new(hosts: Vec<FleetHost>) -> Self {
        let description = format!(
            "the hosts {}",
            hosts
                .iter()
                .map(|h| format!("{} ({})", h.name, h.engine.host()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Self {
            hosts,
            description,
            index: Mutex::new(Index::default()),
            connected: tokio::sync::OnceCell::new(),
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index is a cache of the hosts: a poisoned one is still usable.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `call` (engine operation `op`) on host `i`, bounded by `limit` (the
    /// host's timeout when `None`), its error naming the host. Each is one
    /// debug line of target `runner::engine_calls` (what the scale
    /// benchmark counts).
    async fn on<T, F>(
        &self,
        op: &'static str,
        i: usize,
        limit: Option<Duration>,
        call: F,
    ) -> Result<T, EngineError>
    where
        F: Future<Output = Result<T, EngineError>>,
    {
        let host = &self.hosts[i];
        tracing::debug!(target: "runner::engine_calls", host = %host.name, op, "engine call");
        let limit = limit.unwrap_or(host.timeout);
        let began = std::time::Instant::now();
        let result = match tokio::time::timeout(limit, call).await {
            Ok(result) => {
                let ms = began.elapsed().as_millis() as u64;
                tracing::trace!(target: "runner::engine_calls", host = %host.name, op, ms, "engine answered");
                result
            }
            Err(_) => Err(EngineError::Unavailable {
                endpoint: host.engine.host().to_string(),
                reason: format!(
                    "no answer within {} (the host's timeout)",
                    humantime::format_duration(limit)
                ),
            }),
        };
        result.map_err(|source| EngineError::OnHost {
            host: host.name.clone(),
            source: Box::new(source),
        })
    }

    /// Connect to every host and read where every container runs: the
    /// preflight, once per process.
    async fn preflight(&self) -> Result<(), EngineError> {
        self.connected
            .get_or_try_init(|| async {
                let connected = join_all((0..self.hosts.len()).map(|i| {
                    self.on("connect", i, None, async move {
                        self.hosts[i].engine.connect().await
                    })
                }))
                .await;
                if let Some(e) = connected.into_iter().find_map(Result::err) {
                    return Err(e);
                }
                self.refresh().await
            })
            .await
            .map(|_| ())
    }

    /// Read every host's containers into the index.
    async fn refresh(&self) -> Result<(), EngineError> {
        let listed = self.list_all(ListFilter {
            all: true,
            ..ListFilter::default()
        });
        let per_host = listed.await?;
        let mut index = self.index();
        index.by_id.clear();
        index.by_name.clear();
        for (host, summaries) in per_host.into_iter().enumerate() {
            for c in summaries.into_iter().filter(|c| !c.id.is_empty()) {
                let placed = Placed {
                    host,
                    name: c.name,
                    service: c.service,
                };
                index.insert(c.id, placed);
            }
        }
        Ok(())
    }

    /// `filter`'s containers of every host, by host; one failing host fails it
    /// (a partial list would hide containers from a deploy).
    async fn list_all(
        &self,
        filter: ListFilter,
    ) -> Result<Vec<Vec<ContainerSummary>>, EngineError> {
        let lists = join_all((0..self.hosts.len()).map(|i| {
            let filter = filter.clone();
            self.on("list", i, None, async move {
                self.hosts[i].engine.list(filter).await
            })
        }))
        .await;
        lists.into_iter().collect()
    }

    /// The host running the container `key` (ID, name or ID prefix).
    async fn locate(&self, key: &str) -> Result<usize, EngineError> {
        self.preflight().await?;
        if let Some(host) = self.index().host_of(key) {
            return Ok(host);
        }
        // Created by another process since the index was read.
        self.refresh().await?;
        self.index()
            .host_of(key)
            .ok_or_else(|| EngineError::NotFound(format!("No such container: {key}")))
    }

    /// `call` on the host of container `key`; a container the host no longer
    /// has leaves the index.
    async fn at<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        limit: Option<Duration>,
        call: F,
    ) -> Result<T, EngineError>
    where
        F: FnOnce(Arc<dyn ContainerEngine>) -> Fut,
        Fut: Future<Output = Result<T, EngineError>>,
    {
        let i = self.locate(key).await?;
        let result = self
            .on(op, i, limit, call(self.hosts[i].engine.clone()))
            .await;
        if let Err(EngineError::OnHost { source, .. }) = &result
            && matches!(**source, EngineError::NotFound(_))
        {
            let mut index = self.index();
            let id = index.by_name.get(key).cloned().unwrap_or(key.to_string());
            index.forget(&id);
        }
        result
    }

    /// Choose the host for `spec` and hold its name there until created.
    fn place(&self, spec: &ContainerSpec) -> Result<usize, EngineError> {
        let service = spec.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let mut index = self.index();
        if let Some(id) = index.by_name.get(&spec.name)
            && let Some(placed) = index.by_id.get(id)
        {
            return Err(EngineError::Conflict(format!(
                "the container name \"{}\" is already in use on host {}: names are unique across the hosts",
                spec.name, self.hosts[placed.host].name
            )));
        }
        if index.pending.contains_key(&spec.name) {
            return Err(EngineError::Conflict(format!(
                "the container name \"{}\" is being created already",
                spec.name
            )));
        }
        let candidates: Vec<usize> = spec
            .hosts
            .iter()
            .filter_map(|name| self.hosts.iter().position(|h| &h.name == name))
            .collect();
        let chosen = candidates
            .iter()
            .copied()
            .min_by_key(|&i| (index.load(i, &service), i))
            .ok_or_else(|| {
                EngineError::Failed(format!(
                    "no host to place \"{}\" on (it may go to: {})",
                    spec.name,
                    if spec.hosts.is_empty() {
                        "none".to_string()
                    } else {
                        spec.hosts.join(", ")
                    }
                ))
            })?;
        index.pending.insert(spec.name.clone(), (chosen, service));
        Ok(chosen)
    }

    fn host_info(&self, i: usize) -> HostInfo {
        HostInfo {
            name: self.hosts[i].name.clone(),
            address: self.hosts[i].address.clone(),
        }
    }

    /// An inspect as the fleet reports it: the host's name, its ports at
    /// the host's address.
    fn on_host(&self, i: usize, mut info: ContainerInfo) -> ContainerInfo {
        info.host = self.hosts[i].name.clone();
        for port in &mut info.ports {
            port.host_ip = self.hosts[i].address.clone();
        }
        info
    }

    /// The same image on every host: the first host's, if every host has it
    /// under one ID.
    async fn image_everywhere(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        let found = join_all((0..self.hosts.len()).map(|i| {
            self.on("inspect_image", i, None, async move {
                self.hosts[i].engine.inspect_image(reference).await
            })
        }))
        .await;
        let mut first: Option<(usize, ImageInfo)> = None;
        for (i, image) in found.into_iter().enumerate() {
            let image = image?;
            match &first {
                None => first = Some((i, image)),
                Some((j, seen)) if seen.id != image.id => {
                    return Err(EngineError::Failed(format!(
                        "image {reference} differs between host {} ({}) and host {} ({}): load or pull the same image on every host",
                        self.hosts[*j].name,
                        seen.id.as_deref().unwrap_or("no ID"),
                        self.hosts[i].name,
                        image.id.as_deref().unwrap_or("no ID"),
                    )));
                }
                Some(_) => {}
            }
        }
        first
            .map(|(_, image)| image)
            .ok_or_else(|| EngineError::NotFound(format!("No such image: {reference}")))
    }

    /// `call` on every host side by side; the first error, if any.
    async fn everywhere<F, Fut>(
        &self,
        op: &'static str,
        limit: Option<Duration>,
        call: F,
    ) -> Result<(), EngineError>
    where
        F: Fn(Arc<dyn ContainerEngine>) -> Fut,
        Fut: Future<Output = Result<(), EngineError>>,
    {
        self.preflight().await?;
        let done = join_all(
            (0..self.hosts.len())
                .map(|i| self.on(op, i, limit, call(self.hosts[i].engine.clone()))),
        )
        .await;
        done.into_iter().collect()
    }
}

/// A listing's `IP:PORT`s as reached at the host's `address`.
pub(super) fn at_address(ports: &mut [String], address: &str) {
    for port in ports {
        if let Some((_, number)) = port.rsplit_once(':') {
            *port = format!("{address}:{number}");
        }
    }
}

/// Image transfers and builds take as long as they take (the capability bounds them).
const UNBOUNDED: Option<Duration> = Some(Duration::from_secs(24 * 3600));

#[async_trait::async_trait]
impl ContainerEngine for FleetEngine {
    fn host(&self) -> &str {
        &self.description
    }

    /// Each container's ports are reported at its host's address already.
    fn address_policy(&self) -> AddressPolicy {
        AddressPolicy::Published
    }

    fn hosts(&self) -> Vec<HostInfo> {
        (0..self.hosts.len()).map(|i| self.host_info(i)).collect()
    }

    fn members(&self) -> Vec<(HostInfo, Arc<dyn ContainerEngine>)> {
        (0..self.hosts.len())
            .map(|i| (self.host_info(i), self.hosts[i].engine.clone()))
            .collect()
    }

    async fn connect(&self) -> Result<(), EngineError> {
        self.preflight().await
    }

    async fn pull(&self, image: &str) -> Result<(), EngineError> {
        self.everywhere("pull", UNBOUNDED, |e| async move { e.pull(image).await })
            .await
    }

    async fn build(&self, spec: BuildSpec, context: Vec<u8>) -> Result<(), EngineError> {
        let (spec, context) = (&spec, &context);
        self.everywhere("build", UNBOUNDED, |e| async move {
            e.build(spec.clone(), context.clone()).await
        })
        .await
    }

    async fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.everywhere(
            "tag",
            None,
            |e| async move { e.tag(source, repo, tag).await },
        )
        .await
    }

    /// From the first host: the image is the same on all.
    async fn push(&self, name: &str, tag: Option<&str>) -> Result<(), EngineError> {
        self.preflight().await?;
        let engine = self.hosts[0].engine.clone();
        self.on(
            "push",
            0,
            UNBOUNDED,
            async move { engine.push(name, tag).await },
        )
        .await
    }

    async fn inspect_image(&self, reference: &str) -> Result<ImageInfo, EngineError> {
        self.preflight().await?;
        self.image_everywhere(reference).await
    }

    async fn create(&self, mut spec: ContainerSpec) -> Result<String, EngineError> {
        self.preflight().await?;
        let i = self.place(&spec)?;
        let name = spec.name.clone();
        spec.publish_ip = self.hosts[i].publish_ip.clone();
        let engine = self.hosts[i].engine.clone();
        let created = self
            .on("create", i, None, async move { engine.create(spec).await })
            .await;
        let mut index = self.index();
        let (_, service) = index.pending.remove(&name).unwrap_or_default();
        let id = created?;
        index.insert(
            id.clone(),
            Placed {
                host: i,
                name,
                service,
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.at("start", id, None, |e| async move { e.start(id).await })
            .await
    }

    async fn stop(&self, id: &str, timeout_secs: u32) -> Result<(), EngineError> {
        let limit = Duration::from_secs(u64::from(timeout_secs) + 10);
        let i = self.locate(id).await?;
        let limit = Some(limit.max(self.hosts[i].timeout));
        self.at("stop", id, limit, |e| async move {
            e.stop(id, timeout_secs).await
        })
        .await
    }

    async fn remove(&self, id: &str, force: bool) -> Result<(), EngineError> {
        self.at(
            "remove",
            id,
            None,
            |e| async move { e.remove(id, force).await },
        )
        .await?;
        let mut index = self.index();
        let id = index.by_name.get(id).cloned().unwrap_or(id.to_string());
        index.forget(&id);
        Ok(())
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<(), EngineError> {
        self.at(
            "kill",
            id,
            None,
            |e| async move { e.kill(id, signal).await },
        )
        .await
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, EngineError> {
        let i = self.locate(id).await?;
        let info = self
            .at("inspect", id, None, |e| async move { e.inspect(id).await })
            .await?;
        Ok(self.on_host(i, info))
    }

    async fn list(&self, filter: ListFilter) -> Result<Vec<ContainerSummary>, EngineError> {
        self.preflight().await?;
        let per_host = self.list_all(filter).await?;
        let mut all = Vec::new();
        let mut index = self.index();
        for (i, summaries) in per_host.into_iter().enumerate() {
            let host = &self.hosts[i];
            for mut c in summaries {
                if !c.id.is_empty() && !index.by_id.contains_key(&c.id) {
                    let placed = Placed {
                        host: i,
                        name: c.name.clone(),
                        service: c.service.clone(),
                    };
                    index.insert(c.id.clone(), placed);
                }
                c.host = host.name.clone();
                at_address(&mut c.ports, &host.address);
                all.push(c);
            }
        }
        Ok(all)
    }

    async fn wait(&self, id: &str) -> Result<Option<i64>, EngineError> {
        self.at("wait", id, UNBOUNDED, |e| async move { e.wait(id).await })
            .await
    }

    async fn logs(&self, id: &str, tail: u32, max_bytes: usize) -> Result<String, EngineError> {
        self.at("logs", id, None, |e| async move {
            e.logs(id, tail, max_bytes).await
        })
        .await
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
