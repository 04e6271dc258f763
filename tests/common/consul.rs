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

mod api;
mod paths;

use paths::{Resolved, escape_path, resolve};
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
    meta: serde_json::Value,
    /// The agent's node (agent registrations), or the one
    /// `/v1/catalog/register` named.
    node: String,
    node_address: String,
    /// The agent registration's check (flipped by `set_check`).
    status: String,
    /// Checks given to `/v1/catalog/register`, as Consul stores them; agent
    /// registrations have the agent's `serfHealth` and a service check.
    catalog_checks: Option<Vec<serde_json::Value>>,
}

/// The node agent registrations land on, as a one-agent Consul's.
const AGENT_NODE: &str = "runner-test";

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
        // Consul registers itself, on its own node, as every agent does.
        let consul = Service {
            id: "consul".into(),
            name: "consul".into(),
            address: String::new(),
            port: 8300,
            tags: vec![],
            meta: serde_json::json!({}),
            node: AGENT_NODE.into(),
            node_address: "127.0.0.1".into(),
            status: "passing".into(),
            catalog_checks: Some(vec![]),
        };
        let shared: Shared = Arc::new((
            Mutex::new(State {
                token: token.map(str::to_string),
                services: BTreeMap::from([("consul".to_string(), consul)]),
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

    /// Register a service instance on a node through Consul's catalog API
    /// (`PUT /v1/catalog/register`, as another Consul client would).
    pub fn catalog_register(&self, body: &serde_json::Value) {
        let token = self.state().token.clone();
        let (status, text, _) = self.state().handle(
            "PUT",
            "/v1/catalog/register",
            &BTreeMap::new(),
            token,
            body.to_string().into_bytes(),
        );
        assert_eq!(status, 200, "catalog register: {text}");
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
