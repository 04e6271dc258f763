//! The test server's Consul API: KV, sessions, catalog, health and agent
//! endpoints over the shared state, answered as Consul answers them.

use super::{Entry, Service, Session, State};
use base64::Engine as _;
use std::collections::BTreeMap;

pub(super) type Reply = (u16, String, Vec<(String, String)>);

fn json(status: u16, body: serde_json::Value, index: u64) -> Reply {
    (
        status,
        body.to_string(),
        vec![("X-Consul-Index".into(), index.to_string())],
    )
}

/// Tags as Consul takes them: a list of strings (null is none).
fn string_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|t| {
            t.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Service metadata as Consul answers it: an object, `{}` when none was given.
fn meta(v: &serde_json::Value) -> serde_json::Value {
    if v.is_object() {
        v.clone()
    } else {
        serde_json::json!({})
    }
}

fn text(status: u16, body: &str) -> Reply {
    (status, body.to_string(), vec![])
}

impl State {
    pub(super) fn bump(&mut self) -> u64 {
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

    pub(super) fn handle(
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
                // Each service's tags, once each, as Consul's state store
                // collects them (its order is a map's: unspecified).
                let mut all: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
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
                    tags: string_list(&v["Tags"]),
                    meta: v["Meta"].clone(),
                    node: super::AGENT_NODE.into(),
                    node_address: "127.0.0.1".into(),
                    status: "passing".into(),
                    catalog_checks: None,
                };
                self.bump();
                self.services.insert(service.id.clone(), service);
                text(200, "")
            }
            // Consul's catalog registration of a service on any node: Node,
            // Address, Service {ID, Service, Tags, Address, Port, Meta} and
            // Check or Checks (each {CheckID, Name, Status, Notes, Output,
            // ServiceID}).
            ("PUT", "/v1/catalog/register") => {
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return text(400, "Request decode failed");
                };
                let node = v["Node"].as_str().unwrap_or_default().to_string();
                let s = &v["Service"];
                let name = s["Service"].as_str().unwrap_or_default().to_string();
                if node.is_empty() || name.is_empty() {
                    return text(400, "Must provide node and service");
                }
                let mut checks: Vec<serde_json::Value> = match &v["Checks"] {
                    serde_json::Value::Array(list) => list.clone(),
                    _ if v["Check"].is_object() => vec![v["Check"].clone()],
                    _ => vec![],
                };
                for check in &mut checks {
                    check["Node"] = serde_json::json!(node);
                    for field in ["Notes", "Output", "ServiceID", "ServiceName"] {
                        if check[field].is_null() {
                            check[field] = serde_json::json!("");
                        }
                    }
                    if check["ServiceID"] != "" {
                        check["ServiceName"] = serde_json::json!(name);
                    }
                }
                let service = Service {
                    id: s["ID"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| name.clone()),
                    name,
                    address: s["Address"].as_str().unwrap_or_default().to_string(),
                    port: s["Port"].as_u64().unwrap_or(0) as u16,
                    tags: string_list(&s["Tags"]),
                    meta: s["Meta"].clone(),
                    node,
                    node_address: v["Address"].as_str().unwrap_or_default().to_string(),
                    status: String::new(),
                    catalog_checks: Some(checks),
                };
                self.bump();
                self.services.insert(service.id.clone(), service);
                text(200, "true")
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
                            "Meta": meta(&s.meta), "Port": s.port, "Address": s.address,
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
                                "ID": "node-id", "Node": s.node, "Address": s.node_address, "Datacenter": "dc1",
                                "TaggedAddresses": {}, "NodeMeta": {}, "ServiceID": s.id, "ServiceName": s.name,
                                "ServiceAddress": s.address, "ServiceTags": s.tags, "ServiceMeta": meta(&s.meta),
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
                    // `?passing`: only instances all of whose checks pass.
                    let passing_only = query.contains_key("passing");
                    let list: Vec<serde_json::Value> = self
                        .services
                        .values()
                        .filter(|s| s.name == name)
                        .map(|s| {
                            let checks = s.catalog_checks.clone().unwrap_or_else(|| vec![
                                serde_json::json!({"Node": s.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing", "Notes": "", "Output": "", "ServiceID": "", "ServiceName": ""}),
                                serde_json::json!({"Node": s.node, "CheckID": format!("service:{}", s.id), "Name": format!("Service '{}' check", s.name), "Status": s.status, "Notes": "", "Output": "", "ServiceID": s.id, "ServiceName": s.name}),
                            ]);
                            serde_json::json!({
                                "Node": {"ID": "node-id", "Node": s.node, "Address": s.node_address, "Datacenter": "dc1"},
                                "Service": {"ID": s.id, "Service": s.name, "Tags": s.tags, "Address": s.address, "Port": s.port, "Meta": meta(&s.meta)},
                                "Checks": checks,
                            })
                        })
                        .filter(|entry| {
                            !passing_only
                                || entry["Checks"]
                                    .as_array()
                                    .is_some_and(|c| c.iter().all(|c| c["Status"] == "passing"))
                        })
                        .collect();
                    return json(200, list.into(), index);
                }
                text(404, "no such endpoint in the test server")
            }
        }
    }

    pub(super) fn kv(
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
