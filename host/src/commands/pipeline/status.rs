//! `runner status`: a service now.

use super::{check_service, connect};
use crate::bindings::describe;
use crate::caps::journal;
use crate::caps::proxy::{Driver, ProxyConfig, haproxy_servers};
use crate::cli::{Cli, ServiceArgs};
use crate::commands::CommandError;
use crate::commands::host::Open;
use crate::conventions::{self};
use crate::pipeline::file::Pipeline;
use crate::pipeline::history::{self};
use std::io::Write;
use std::time::Duration;

pub(crate) async fn status(cli: &Cli, args: &ServiceArgs) -> Result<(), CommandError> {
    // Without the pipeline file there is still the registry and the engine
    // to ask; only the proxy's upstream needs the file's [proxies].
    let pipeline = if args.file.exists() {
        let sources = crate::commands::host::sources(
            cli,
            &args.options.plugin_path,
            Some(&args.file),
            args.options.locked,
            Default::default(),
        )?;
        let pipeline = Pipeline::load(&args.file, &sources, None)?;
        check_service(&pipeline, &args.service)?;
        Some(pipeline)
    } else {
        None
    };
    let service = &args.service;
    let host = connect(
        cli,
        &args.options,
        pipeline.as_ref(),
        Duration::from_secs(30),
        Open::Now,
    )?;
    let registry = host.registry.clone();
    let mut out = String::new();
    let color = registry
        .kv_get(&conventions::color_key(service))
        .await?
        .map(|e| String::from_utf8_lossy(&e.value).into_owned());
    out.push_str(&format!(
        "service     {service} ({})\ncolor       {}\n",
        match &pipeline {
            Some(_) => args.file.display().to_string(),
            None => format!("no {}: proxy not shown", args.file.display()),
        },
        color.as_deref().unwrap_or("none (never deployed)")
    ));
    let docker = host.docker.clone();
    out.push_str("containers\n");
    let prefix = conventions::container_prefix(service);
    for report in crate::caps::docker::containers_by_host(&*docker, &prefix).await {
        let indent = match &report.host {
            None => "  ",
            Some(h) => {
                out.push_str(&format!(
                    "  host {} (at {}, engine {})\n",
                    h.name, h.address, report.engine
                ));
                "    "
            }
        };
        match report.containers {
            Ok(list) if list.is_empty() => out.push_str(&format!("{indent}none\n")),
            Ok(list) => {
                for c in list {
                    out.push_str(&format!(
                        "{indent}{:24}  {:8}  {:40}  {}\n",
                        c.name,
                        c.state,
                        c.image,
                        c.ports.join(" ")
                    ));
                }
            }
            Err(e) => out.push_str(&format!("{indent}unknown: {}\n", describe(&e))),
        }
    }
    let proxies = pipeline
        .as_ref()
        .map(|p| p.runfile.proxies.as_slice())
        .unwrap_or_default();
    for proxy in proxies {
        let upstreams = proxy_upstreams(proxy, service).await;
        out.push_str(&format!("proxy       {} → {upstreams}\n", proxy.name));
    }
    let lock = match registry.lock_holder(service).await {
        Ok(Some(holder)) => format!("held by {holder}"),
        Ok(None) => "free".to_string(),
        Err(e) => format!("unknown: {e}"),
    };
    out.push_str(&format!("lock        {lock}\n"));
    match journal::read(&*registry, service).await {
        Ok(None) => {}
        Ok(Some(entry)) => out.push_str(&format!(
            "interrupted deploy at step {} ({:?}, by {}, {}); recovery will {} \
             (`runner recover {service}`, or the next `runner run`)\n",
            entry.step,
            entry.phase,
            entry.holder,
            entry
                .details
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
            entry.phase.recovery()
        )),
        Err(e) => out.push_str(&format!("interrupted deploy: unreadable journal: {e}\n")),
    }
    if let Some(paused) = history::paused(&*registry, service).await? {
        out.push_str(&format!(
            "promotion   waiting at stage {} (`runner promote {service}` continues)\n",
            paused.stage
        ));
    }
    out.push_str("last deploys\n");
    let records = history::list(&*registry, service, 5).await?;
    if records.is_empty() {
        out.push_str("  none\n");
    }
    for r in records {
        out.push_str(&format!(
            "  {}  {:8}  {:28}  {:6}  {:9}  {:.1}s  by {}\n",
            r.started_at,
            r.kind,
            r.version,
            r.color,
            r.outcome,
            r.duration_ms as f64 / 1000.0,
            r.user
        ));
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

/// What `proxy` sends `service` to: the `server` lines of its files, or the
/// ready servers of the HAProxy backend named after the service.
async fn proxy_upstreams(proxy: &ProxyConfig, service: &str) -> String {
    let servers = match &proxy.driver {
        Driver::Haproxy { admin_socket } => {
            match haproxy_servers(admin_socket, service, proxy.timeout).await {
                Ok(slots) => slots
                    .into_iter()
                    .filter(|s| s.ready)
                    .map(|s| format!("{}:{}", s.address, s.port))
                    .collect(),
                Err(e) => return format!("unknown: {}", describe(&e)),
            }
        }
        Driver::Files => {
            let mut servers = Vec::new();
            let Some(dir) = &proxy.config_dir else {
                return "no config_dir".into();
            };
            for entry in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !conventions::is_upstream_file(&name, service) {
                    continue;
                }
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                servers.extend(conventions::upstream_servers(&text));
            }
            servers
        }
    };
    if servers.is_empty() {
        "no upstream".to_string()
    } else {
        servers.join(", ")
    }
}
