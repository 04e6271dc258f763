//! A Consul HTTP API test server for the Consul backend's tests. No Consul
//! server can be installed on these machines, so this follows the shapes in
//! `shared/reference/consul-http-api.md` exactly for the endpoints runner
//! uses: KV (base64 values, an index that increases on every write,
//! `X-Consul-Index`, `?raw`, `?recurse`, `?keys`, `?cas=`), catalog and
//! health (checks that tests can flip), agent register/deregister, ACL 403 on
//! a token mismatch, and injectable faults (500s, slow answers, down).
//!
//! Sessions (create/renew/destroy, TTL expiry, behavior "release") and KV
//! `?acquire=`/`?release=` locks are implemented; a test can shorten every
//! session's TTL to see a dead holder's lock expire quickly.
//!
//! Blocking queries: a GET with `?index=N` waits until the index passes N or
//! `wait` (default 5m, at most 10m) ends, as Consul does. Every request runs
//! on its own thread so a blocking query never holds up the others. The
//! index given is the server-wide one (Consul allows wake-ups on unrelated
//! writes; clients compare data).
//!
//! Paths resolve as Consul's Go `net/http` resolves them: the handlers see
//! the percent-decoded path (`%2f` is `/`, `%2e%2e` is `..`), and the
//! `ServeMux` in front answers a path that is not clean (`.` or `..`
//! segments, `//`) with a 301 to the cleaned path, query kept, before any
//! handler runs (see [`resolve`]). So a key written as `a/../b` is never
//! stored under that name: a client that follows the redirect reaches `b`.
//!
//! Faults: `fail_next` (500s), `set_delay` (slow), `set_down` (every request's
//! connection closed unanswered, as a dead server's), `go_down_after` (down
//! from a given request on), `reset_index` (the index goes backwards, as after
//! a snapshot restore).

use base64::Engine as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    create_index: u64,
    modify_index: u64,
    session: Option<String>,
}

struct Session {
    ttl: std::time::Duration,
    expires: std::time::Instant,
}

#[derive(Clone, Debug)]
struct Service {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    status: String,
}

#[derive(Default)]
struct State {
    index: u64,
    kv: BTreeMap<String, Entry>,
    services: BTreeMap<String, Service>,
    token: Option<String>,
    /// Answer this many requests with 500 before serving normally.
    failures: usize,
    sessions: BTreeMap<String, Session>,
    next_session: u64,
    /// When set, sessions live this long whatever TTL they ask for.
    ttl_override: Option<std::time::Duration>,
    /// Answer every request only after this long (a slow or overloaded server).
    delay: std::time::Duration,
    /// Refuse new connections and close every request's connection unanswered.
    down: bool,
    /// Client connections through the front, by the address the front uses
    /// towards tiny_http (what tiny_http reports as the request's peer).
    live: BTreeMap<std::net::SocketAddr, std::net::TcpStream>,
    /// Go down right after answering the first request this matches
    /// (method, path, body).
    down_after: Option<DownAfter>,
}

type DownAfter = Box<dyn Fn(&str, &str, &[u8]) -> bool + Send>;

/// The state, and a condition blocking queries wait on for writes.
type Shared = Arc<(Mutex<State>, std::sync::Condvar)>;

pub struct ConsulServer {
    pub port: u16,
    shared: Shared,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    front: Option<std::thread::JoinHandle<()>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

type Reply = (u16, String, Vec<(String, String)>);

fn json(status: u16, body: serde_json::Value, index: u64) -> Reply {
    (
        status,
        body.to_string(),
        vec![("X-Consul-Index".into(), index.to_string())],
    )
}

fn text(status: u16, body: &str) -> Reply {
    (status, body.to_string(), vec![])
}

impl State {
    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Drop expired sessions, releasing their locks (behavior "release").
    fn expire_sessions(&mut self) {
        let now = std::time::Instant::now();
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            self.destroy_session(&id);
        }
    }

    fn destroy_session(&mut self, id: &str) -> bool {
        if self.sessions.remove(id).is_none() {
            return false;
        }
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            let next = self.bump();
            if let Some(e) = self.kv.get_mut(&key) {
                e.session = None;
                e.modify_index = next;
            }
        }
        true
    }

    fn kv_json(key: &str, e: &Entry) -> serde_json::Value {
        serde_json::json!({
            "CreateIndex": e.create_index,
            "ModifyIndex": e.modify_index,
            "LockIndex": 0,
            "Key": key,
            "Flags": 0,
            "Value": if e.value.is_empty() { serde_json::Value::Null } else {
                base64::engine::general_purpose::STANDARD.encode(&e.value).into()
            },
            "Session": e.session,
        })
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
        token: Option<String>,
        body: Vec<u8>,
    ) -> Reply {
        if self.failures > 0 {
            self.failures -= 1;
            return text(500, "injected fault");
        }
        if let Some(expected) = &self.token {
            let given = token.or_else(|| query.get("token").cloned());
            if given.as_deref() != Some(expected.as_str()) {
                return text(403, "Permission denied");
            }
        }
        self.expire_sessions();
        let index = self.index;
        if let Some(key) = path.strip_prefix("/v1/kv/") {
            return self.kv(method, key, query, body);
        }
        match (method, path) {
            ("GET", "/v1/catalog/services") => {
                let mut all: BTreeMap<String, Vec<String>> =
                    BTreeMap::from([("consul".to_string(), vec![])]);
                for s in self.services.values() {
                    all.entry(s.name.clone())
                        .or_default()
                        .extend(s.tags.clone());
                }
                json(200, serde_json::json!(all), index)
            }
            ("PUT", "/v1/session/create") => {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let ttl = v["TTL"]
                    .as_str()
                    .and_then(|t| t.strip_suffix('s'))
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(std::time::Duration::from_secs)
                    .unwrap_or(std::time::Duration::from_secs(3600));
                let ttl = self.ttl_override.unwrap_or(ttl);
                self.next_session += 1;
                let id = format!("00000000-0000-0000-0000-{:012}", self.next_session);
                let expires = std::time::Instant::now() + ttl;
                self.sessions.insert(id.clone(), Session { ttl, expires });
                json(200, serde_json::json!({ "ID": id }), index)
            }
            ("PUT", "/v1/agent/service/register") => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return text(400, "Request decode failed");
                };
                let name = v["Name"].as_str().unwrap_or_default().to_string();
                let service = Service {
                    id: v["ID"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| name.clone()),
                    name,
                    address: v["Address"].as_str().unwrap_or_default().to_string(),
                    port: v["Port"].as_u64().unwrap_or(0) as u16,
                    tags: v["Tags"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                    status: "passing".into(),
                };
                self.bump();
                self.services.insert(service.id.clone(), service);
                text(200, "")
            }
            _ => {
                if let Some(id) = path
                    .strip_prefix("/v1/session/renew/")
                    .filter(|_| method == "PUT")
                {
                    let Some(session) = self.sessions.get_mut(id) else {
                        return text(404, &format!("Session id '{id}' not found"));
                    };
                    session.expires = std::time::Instant::now() + session.ttl;
                    let ttl = format!("{}s", session.ttl.as_secs());
                    return json(200, serde_json::json!([{ "ID": id, "TTL": ttl }]), index);
                }
                if let Some(id) = path
                    .strip_prefix("/v1/session/destroy/")
                    .filter(|_| method == "PUT")
                {
                    self.destroy_session(id);
                    return text(200, "true");
                }
                if let Some(id) = path
                    .strip_prefix("/v1/agent/service/deregister/")
                    .filter(|_| method == "PUT")
                {
                    if self.services.remove(id).is_none() {
                        return text(
                            404,
                            &format!(
                                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
                            ),
                        );
                    }
                    self.bump();
                    return text(200, "");
                }
                if let Some(id) = path
                    .strip_prefix("/v1/agent/service/")
                    .filter(|_| method == "GET")
                {
                    // Consul's agent-local lookup of one instance by ID.
                    let Some(s) = self.services.get(id) else {
                        return text(404, &format!("unknown service ID: {id}"));
                    };
                    return json(
                        200,
                        serde_json::json!({
                            "Kind": "", "ID": s.id, "Service": s.name, "Tags": s.tags,
                            "Meta": {}, "Port": s.port, "Address": s.address,
                            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                            "ContentHash": "0", "Datacenter": "dc1",
                        }),
                        index,
                    );
                }
                if let Some(name) = path
                    .strip_prefix("/v1/catalog/service/")
                    .filter(|_| method == "GET")
                {
                    let list: Vec<serde_json::Value> = self
                        .services
                        .values()
                        .filter(|s| s.name == name)
                        .map(|s| {
                            serde_json::json!({
                                "ID": "node-id", "Node": "runner-test", "Address": "127.0.0.1", "Datacenter": "dc1",
                                "TaggedAddresses": {}, "NodeMeta": {}, "ServiceID": s.id, "ServiceName": s.name,
                                "ServiceAddress": s.address, "ServiceTags": s.tags, "ServiceMeta": {},
                                "ServicePort": s.port, "ServiceEnableTagOverride": false,
                                "CreateIndex": index, "ModifyIndex": index,
                            })
                        })
                        .collect();
                    return json(200, list.into(), index);
                }
                if let Some(name) = path
                    .strip_prefix("/v1/health/service/")
                    .filter(|_| method == "GET")
                {
                    let passing_only = query.contains_key("passing");
                    let list: Vec<serde_json::Value> = self
                        .services
                        .values()
                        .filter(|s| s.name == name && (!passing_only || s.status == "passing"))
                        .map(|s| {
                            serde_json::json!({
                                "Node": {"ID": "node-id", "Node": "runner-test", "Address": "127.0.0.1"},
                                "Service": {"ID": s.id, "Service": s.name, "Tags": s.tags, "Address": s.address, "Port": s.port, "Meta": {}},
                                "Checks": [
                                    {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Output": "", "ServiceID": "", "ServiceName": ""},
                                    {"CheckID": format!("service:{}", s.id), "Name": format!("Service '{}' check", s.name), "Status": s.status, "Output": "", "ServiceID": s.id, "ServiceName": s.name},
                                ],
                            })
                        })
                        .collect();
                    return json(200, list.into(), index);
                }
                text(404, "no such endpoint in the test server")
            }
        }
    }

    fn kv(
        &mut self,
        method: &str,
        key: &str,
        query: &BTreeMap<String, String>,
        body: Vec<u8>,
    ) -> Reply {
        let index = self.index;
        match method {
            "GET" if query.contains_key("keys") => {
                let keys: Vec<&String> = self.kv.keys().filter(|k| k.starts_with(key)).collect();
                if keys.is_empty() {
                    json(404, serde_json::Value::Null, index)
                } else {
                    json(200, serde_json::json!(keys), index)
                }
            }
            "GET" if query.contains_key("recurse") => {
                let list: Vec<serde_json::Value> = self
                    .kv
                    .iter()
                    .filter(|(k, _)| k.starts_with(key))
                    .map(|(k, e)| Self::kv_json(k, e))
                    .collect();
                if list.is_empty() {
                    json(404, serde_json::Value::Null, index)
                } else {
                    json(200, list.into(), index)
                }
            }
            "GET" => match self.kv.get(key) {
                None => (
                    404,
                    String::new(),
                    vec![("X-Consul-Index".into(), index.to_string())],
                ),
                Some(e) if query.contains_key("raw") => (
                    200,
                    String::from_utf8_lossy(&e.value).into_owned(),
                    vec![("X-Consul-Index".into(), index.to_string())],
                ),
                Some(e) => json(200, serde_json::json!([Self::kv_json(key, e)]), index),
            },
            "PUT" if query.contains_key("acquire") => {
                let session = query["acquire"].clone();
                if !self.sessions.contains_key(&session) {
                    return text(500, &format!("invalid session \"{session}\""));
                }
                let holder = self.kv.get(key).and_then(|e| e.session.clone());
                if holder.is_some_and(|s| s != session) {
                    return text(200, "false");
                }
                let next = self.bump();
                let create_index = self.kv.get(key).map(|e| e.create_index).unwrap_or(next);
                let entry = Entry {
                    value: body,
                    create_index,
                    modify_index: next,
                    session: Some(session),
                };
                self.kv.insert(key.to_string(), entry);
                text(200, "true")
            }
            "PUT" if query.contains_key("release") => {
                let session = query["release"].clone();
                if self.kv.get(key).and_then(|e| e.session.clone()) != Some(session) {
                    return text(200, "false");
                }
                let next = self.bump();
                if let Some(e) = self.kv.get_mut(key) {
                    e.session = None;
                    e.modify_index = next;
                }
                text(200, "true")
            }
            "PUT" => {
                if body.len() > 512 * 1024 {
                    return text(413, "Value exceeds 524288 byte limit");
                }
                if let Some(cas) = query.get("cas").and_then(|c| c.parse::<u64>().ok()) {
                    let current = self.kv.get(key).map(|e| e.modify_index).unwrap_or(0);
                    if current != cas {
                        return text(200, "false");
                    }
                }
                let next = self.bump();
                let create_index = self.kv.get(key).map(|e| e.create_index).unwrap_or(next);
                self.kv.insert(
                    key.to_string(),
                    Entry {
                        value: body,
                        create_index,
                        modify_index: next,
                        session: self.kv.get(key).and_then(|e| e.session.clone()),
                    },
                );
                text(200, "true")
            }
            "DELETE" => {
                if let Some(cas) = query.get("cas").and_then(|c| c.parse::<u64>().ok()) {
                    let current = self.kv.get(key).map(|e| e.modify_index).unwrap_or(0);
                    if current != cas {
                        return text(200, "false");
                    }
                }
                if query.contains_key("recurse") {
                    self.kv.retain(|k, _| !k.starts_with(key));
                } else {
                    self.kv.remove(key);
                }
                self.bump();
                text(200, "true")
            }
            _ => text(405, "method not allowed"),
        }
    }
}

impl ConsulServer {
    /// Start on a free 127.0.0.1 port; with `token`, requests without it get 403.
    pub fn start(token: Option<&str>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let backend = server.server_addr().to_ip().expect("ip");
        // Clients connect to a front that forwards to tiny_http, so that
        // "down" can refuse and cut connections as a dead server does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("front addr").port();
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared: Shared = Arc::new((
            Mutex::new(State {
                token: token.map(str::to_string),
                ..Default::default()
            }),
            std::sync::Condvar::new(),
        ));
        let (srv, sh) = (server.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let sh = sh.clone();
                std::thread::spawn(move || serve(&sh, request));
            }
        });
        let front = {
            let (shared, stopping) = (shared.clone(), stopping.clone());
            std::thread::spawn(move || front(listener, backend, &shared, &stopping))
        };
        Self {
            port,
            shared,
            server,
            thread: Some(thread),
            front: Some(front),
            stopping,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Consul backend pointed at this server, without a token.
    pub fn registry(&self) -> runner::registry::ConsulRegistry {
        runner::registry::ConsulRegistry::new(&self.url(), None, std::time::Duration::from_secs(5))
            .expect("consul registry")
    }

    /// Answer the next `n` requests with 500.
    pub fn fail_next(&self, n: usize) {
        self.state().failures = n;
    }

    /// Set the service check of instance `id` (`passing`, `warning`, `critical`).
    pub fn set_check(&self, id: &str, status: &str) {
        let mut state = self.state();
        if let Some(s) = state.services.get_mut(id) {
            s.status = status.to_string();
            state.bump();
        }
        drop(state);
        self.shared.1.notify_all();
    }

    /// Answer every request only after `delay`.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.state().delay = delay;
    }

    /// Make every session created from now on live `ttl`, whatever it asks.
    pub fn set_session_ttl(&self, ttl: std::time::Duration) {
        self.state().ttl_override = Some(ttl);
    }

    /// Take the server down (connections closed unanswered) or back up.
    pub fn set_down(&self, down: bool) {
        let mut state = self.state();
        state.down = down;
        if down {
            for (_, client) in std::mem::take(&mut state.live) {
                let _ = client.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Go down right after answering the first request `matches` accepts.
    pub fn go_down_after(&self, matches: impl Fn(&str, &str, &[u8]) -> bool + Send + 'static) {
        self.state().down_after = Some(Box::new(matches));
    }

    /// Is the server down (set directly or by `go_down_after`)?
    pub fn is_down(&self) -> bool {
        self.state().down
    }

    /// Move the index back to `index` (a restore), bumping nothing else.
    pub fn reset_index(&self, index: u64) {
        let mut state = self.state();
        state.index = index;
        for e in state.kv.values_mut() {
            e.modify_index = e.modify_index.min(index);
            e.create_index = e.create_index.min(index);
        }
        drop(state);
        self.shared.1.notify_all();
    }

    /// Write a key directly (as another Consul client would).
    pub fn put(&self, key: &str, value: &str) {
        self.state()
            .kv("PUT", key, &BTreeMap::new(), value.as_bytes().to_vec());
        self.shared.1.notify_all();
    }

    /// The current raft-like index.
    pub fn index(&self) -> u64 {
        self.state().index
    }
}

impl Drop for ConsulServer {
    fn drop(&mut self) {
        self.set_down(true);
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the front's accept so it sees `stopping`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(f) = self.front.take() {
            let _ = f.join();
        }
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one request on its own thread: faults first, then the API, holding
/// a blocking query (`?index=N`) until the index passes N or its wait ends.
fn serve(shared: &Shared, mut request: tiny_http::Request) {
    let (lock, writes) = &**shared;
    // The request target as sent: parsing it as a URL would resolve `..`
    // here, hiding from the tests what the client sent.
    let target = request.url().to_string();
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
    let query: BTreeMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let token = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Consul-Token"))
        .map(|h| h.value.as_str().to_string());
    let mut body = Vec::new();
    let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
    let method = request.method().as_str().to_string();
    let resolved = resolve(raw_path);
    let (delay, down) = {
        let state = lock.lock().unwrap();
        (state.delay, state.down)
    };
    if down {
        // The connection ends without an answer, as a dead server's.
        let client = request
            .remote_addr()
            .and_then(|peer| lock.lock().unwrap().live.remove(peer));
        if let Some(client) = client {
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        return;
    }
    std::thread::sleep(delay);
    let path = match resolved {
        Resolved::Path(path) => path,
        Resolved::BadEscape => {
            let response = tiny_http::Response::from_string("400 Bad Request: invalid URL escape")
                .with_status_code(400);
            let _ = request.respond(response);
            return;
        }
        Resolved::Redirect(clean) => {
            // ServeMux's redirect: the cleaned path, escaped, with the query.
            let mut location = escape_path(&clean);
            if !raw_query.is_empty() {
                location.push('?');
                location.push_str(raw_query);
            }
            let body = if method == "GET" || method == "HEAD" {
                format!("<a href=\"{location}\">Moved Permanently</a>.\n\n")
            } else {
                String::new()
            };
            let response = tiny_http::Response::from_string(body)
                .with_status_code(301)
                .with_header(
                    tiny_http::Header::from_bytes(&b"Location"[..], location.as_bytes())
                        .expect("location header"),
                );
            let _ = request.respond(response);
            return;
        }
    };
    let blocking = query
        .get("index")
        .filter(|_| method == "GET")
        .and_then(|i| i.parse::<u64>().ok())
        .map(|index| {
            let wait = query
                .get("wait")
                .and_then(|w| humantime::parse_duration(w).ok())
                .unwrap_or(std::time::Duration::from_secs(300))
                .min(std::time::Duration::from_secs(600));
            (index, std::time::Instant::now() + wait)
        });
    let mut state = lock.lock().unwrap();
    let (status, text, headers) = loop {
        let reply = state.handle(&method, &path, &query, token.clone(), body.clone());
        let reply_index = reply
            .2
            .iter()
            .find(|(k, _)| k == "X-Consul-Index")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        match (blocking, reply_index) {
            (Some((index, deadline)), Some(at))
                if at <= index && std::time::Instant::now() < deadline =>
            {
                // Wake on writes, and now and then for session expiry.
                let slice = deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .min(std::time::Duration::from_millis(50));
                state = writes.wait_timeout(state, slice).unwrap().0;
            }
            _ => break reply,
        }
    };
    if let Some(matches) = &state.down_after
        && matches(&method, &path, &body)
    {
        state.down = true;
        state.down_after = None;
    }
    drop(state);
    if method != "GET" {
        writes.notify_all();
    }
    let mut response = tiny_http::Response::from_string(text).with_status_code(status);
    for (k, v) in headers {
        response.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = request.respond(response);
}

/// Accept clients and pipe each to tiny_http, refusing them while down.
fn front(
    listener: std::net::TcpListener,
    backend: std::net::SocketAddr,
    shared: &Shared,
    stopping: &std::sync::atomic::AtomicBool,
) {
    for client in listener.incoming() {
        if stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.0.lock().unwrap().down {
            continue; // dropped: the client's connection closes at once
        }
        let Ok(server) = std::net::TcpStream::connect(backend) else {
            continue;
        };
        let (Ok(peer), Ok(client_copy), Ok(server_copy)) =
            (server.local_addr(), client.try_clone(), server.try_clone())
        else {
            continue;
        };
        if let Ok(c) = client.try_clone() {
            shared.0.lock().unwrap().live.insert(peer, c);
        }
        let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream, shared: Shared| {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
                // The connection ended: forget it.
                shared.0.lock().unwrap().live.remove(&peer);
            })
        };
        pipe(client_copy, server, shared.clone());
        pipe(server_copy, client, shared.clone());
    }
}

/// Where a request path leads in Consul's HTTP server.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Served: the handler sees this (percent-decoded) path.
    Path(String),
    /// Answered with 301 to this clean path before any handler runs.
    Redirect(String),
    /// Go's URL parser rejects the escape (`%zz`): 400.
    BadEscape,
}

/// Resolve a raw request path as Go's `net/http` does in front of Consul's
/// handlers: `url.ParseRequestURI` decodes it into `URL.Path`, then
/// `ServeMux` redirects when `cleanPath(URL.Path)` differs. (That is Go up
/// to 1.21, and later Go with `GODEBUG=httpmuxgo121=1`; the mux of Go 1.22+
/// cleans the still-escaped path, so there `%2e%2e` and `%2f` reach the
/// handler decoded but unresolved: the key `a/../b` itself. Either way a
/// key holding `..` never means what it says.)
pub fn resolve(raw_path: &str) -> Resolved {
    let Some(path) = percent_decode(raw_path) else {
        return Resolved::BadEscape;
    };
    let clean = clean_path(&path);
    if clean == path {
        Resolved::Path(path)
    } else {
        Resolved::Redirect(clean)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `net/http.cleanPath`: `path.Clean` of the rooted path, keeping a
/// trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    let rooted = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in rooted.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if rooted.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `url.URL{Path: p}.EscapedPath()`: what a redirect's Location holds.
fn escape_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
