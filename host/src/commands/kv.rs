//! `runner kv` and `runner catalog`: the registry's store and catalog.

use super::CommandError;
use super::host::{Host, Open};
use crate::cli::{CatalogCommand, Cli, KvCommand};
use crate::registry::{Health, Instance, Registry};
use std::io::Write;

pub(super) async fn kv(cli: &Cli, cmd: &KvCommand) -> Result<(), CommandError> {
    let registry = Host::registry(cli, Open::Now)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCommand::Get { key, detailed } => {
            let entry = registry
                .kv_get(key)
                .await?
                .ok_or_else(|| CommandError::NotFound(format!("key \"{key}\" does not exist")))?;
            if *detailed {
                writeln!(
                    out,
                    "key\t{}\ncreate_index\t{}\nmodify_index\t{}",
                    entry.key, entry.create_index, entry.modify_index
                )?;
                writeln!(out, "value\t{}", String::from_utf8_lossy(&entry.value))?;
            } else {
                out.write_all(&entry.value)?;
                if !entry.value.ends_with(b"\n") {
                    writeln!(out)?;
                }
            }
        }
        KvCommand::Put { key, value, cas } => match cas {
            Some(index) => {
                if !registry.kv_cas(key, value.as_bytes(), *index).await? {
                    return Err(CommandError::NotFound(format!(
                        "key \"{key}\" was not written: its modify index is not {index} (read it again with `runner kv get --detailed {key}`)"
                    )));
                }
            }
            None => {
                registry.kv_put(key, value.as_bytes()).await?;
            }
        },
        KvCommand::List { prefix } => {
            for entry in registry.kv_list(prefix).await? {
                writeln!(
                    out,
                    "{}\t{}",
                    entry.key,
                    String::from_utf8_lossy(&entry.value)
                )?;
            }
        }
        KvCommand::Delete { key } => {
            if !registry.kv_delete(key).await? {
                return Err(CommandError::NotFound(format!(
                    "key \"{key}\" does not exist"
                )));
            }
        }
    }
    Ok(())
}

pub(super) async fn catalog(cli: &Cli, cmd: &CatalogCommand) -> Result<(), CommandError> {
    let registry = Host::registry(cli, Open::Now)?;
    match cmd {
        CatalogCommand::List { service } => list(&*registry, service.as_deref()).await,
        CatalogCommand::Register {
            service,
            address: (address, port),
            id,
            tags,
            status,
            critical,
            node,
            node_address,
            meta,
        } => {
            let id = id.as_deref().unwrap_or(service);
            let usage = |e: crate::names::InvalidName| CommandError::Usage(e.to_string());
            crate::names::service_name(service).map_err(usage)?;
            crate::names::instance_id(id).map_err(usage)?;
            // A Consul agent registers on its own node, and its checks decide
            // the status: say so rather than drop what was asked.
            let status = if *critical { Health::Critical } else { *status };
            if cli.consul.is_some()
                && (node.is_some() || node_address.is_some() || status != Health::Passing)
            {
                return Err(CommandError::Usage(
                    "--node, --node-address and --status are the embedded registry's: a Consul \
                     agent registers instances on its own node, with a TCP check deciding their status"
                        .to_string(),
                ));
            }
            if let Some(node) = node {
                // Consul's node names are DNS-safe, as service names are.
                crate::names::service_name(node).map_err(|_| {
                    CommandError::Usage(format!(
                        "--node \"{node}\" is not a node name: use letters, digits, '.', '_' and '-'"
                    ))
                })?;
            }
            if crate::caps::docker::is_host_instance_id(id) {
                return Err(CommandError::Usage(format!(
                    "instance ID \"{id}\" starts with \"{}\", which runner keeps for the containers it runs; pick another --id",
                    crate::caps::docker::REGISTRATION_PREFIX
                )));
            }
            registry
                .register(&Instance {
                    id: id.to_string(),
                    name: service.clone(),
                    address: address.clone(),
                    port: *port,
                    tags: tags.clone(),
                    status,
                    node: node.clone().unwrap_or_default(),
                    node_address: node_address.clone().unwrap_or_default(),
                    meta: meta.iter().cloned().collect(),
                    checks: Vec::new(),
                })
                .await?;
            tracing::info!("registered {service} instance {id} at {address}:{port}");
            Ok(())
        }
        CatalogCommand::Deregister { service, id } => {
            if !registry.deregister(service, id).await? {
                return Err(CommandError::NotFound(format!(
                    "service {service} has no instance \"{id}\" (see `runner catalog list {service}`)"
                )));
            }
            Ok(())
        }
    }
}

async fn list(registry: &dyn Registry, service: Option<&str>) -> Result<(), CommandError> {
    let names = match service {
        Some(s) => vec![s.to_string()],
        None => registry.services().await?,
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "SERVICE\tID\tADDRESS\tHEALTH\tTAGS")?;
    for name in names {
        for i in registry.instances(&name).await? {
            let health = i.status;
            writeln!(
                out,
                "{}\t{}\t{}:{}\t{}\t{}",
                i.name,
                i.id,
                i.address,
                i.port,
                health,
                i.tags.join(",")
            )?;
        }
    }
    Ok(())
}
