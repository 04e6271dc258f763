//! `runner lock`: who holds a service's deploy lock, and breaking it.

use super::CommandError;
use super::host::{Host, Open};
use crate::cli::{Cli, LockCommand};
use crate::registry::RegistryError;
use std::io::Write;

pub(super) async fn lock(cli: &Cli, cmd: &LockCommand) -> Result<(), CommandError> {
    let registry = Host::registry(cli, Open::Lazy)?;
    let nobody = |service: &str| {
        CommandError::NotFound(format!("nobody holds the deploy lock of {service}"))
    };
    match cmd {
        LockCommand::Status { service } => {
            let holder = registry
                .lock_holder(service)
                .await?
                .ok_or_else(|| nobody(service))?;
            writeln!(std::io::stdout().lock(), "{service}: held by {holder}")?;
        }
        LockCommand::Release { service } => {
            let released = registry.force_unlock(service).await.map_err(|e| match e {
                RegistryError::Refused(m) => CommandError::NotFound(m),
                e => e.into(),
            })?;
            if !released {
                return Err(nobody(service));
            }
            tracing::info!("released the deploy lock of {service}");
        }
    }
    Ok(())
}
