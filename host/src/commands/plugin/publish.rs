//! `runner plugin push|pull|login`.

use super::{client, registry_error, store};
use crate::cli::Cli;
use crate::commands::CommandError;
use crate::commands::host::runtime;
use crate::oci::OciRef;
use std::io::{Read, Write};
use std::path::Path;

pub(crate) async fn push(cli: &Cli, file: &Path, reference: &str) -> Result<(), CommandError> {
    let reference = OciRef::parse(reference).map_err(registry_error)?;
    if reference.digest().is_some() {
        return Err(CommandError::Usage(format!(
            "push to a tag (oci://{}/{}:TAG), not a digest: the digest is what the push prints",
            reference.registry(),
            reference.repository()
        )));
    }
    let runtime = runtime(cli)?;
    // Read as `exec` reads it, and check it is a loadable runner stage:
    // publishing something runner cannot run helps no one.
    let bytes = runtime.read_plugin(file)?;
    let plugin = runtime.load_bytes("push", file, &bytes)?;
    // What it declares travels in the artifact's config (for `inspect REF`).
    let description = runtime.describe(&plugin).await?;
    let title = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}.wasm", reference.name()));
    let pushed = client(cli)
        .push(&reference, &bytes, &title, description)
        .await
        .map_err(registry_error)?;
    eprintln!(
        "pushed {reference} ({}, layer {})",
        bytesize::ByteSize(pushed.size),
        pushed.layer
    );
    writeln!(std::io::stdout().lock(), "{}", pushed.manifest)?;
    Ok(())
}

pub(crate) async fn pull(cli: &Cli, reference: &str) -> Result<(), CommandError> {
    let reference = OciRef::parse(reference).map_err(registry_error)?;
    let pulled = client(cli)
        .pull(&reference, false)
        .await
        .map_err(registry_error)?;
    let store = store(cli)?;
    store
        .save(&reference.to_string(), &pulled)
        .map_err(registry_error)?;
    eprintln!(
        "pulled {reference} ({}) into {}",
        bytesize::ByteSize(pulled.plugin.layer_size),
        store.dir().display()
    );
    writeln!(std::io::stdout().lock(), "{}", pulled.manifest_digest)?;
    Ok(())
}

pub(crate) async fn login(cli: &Cli, registry: &str, username: &str) -> Result<(), CommandError> {
    if registry.contains('/') || registry.is_empty() {
        return Err(CommandError::Usage(format!(
            "\"{registry}\" is not a registry; give HOST[:PORT], e.g. 127.0.0.1:5000"
        )));
    }
    let mut password = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut password)?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(CommandError::Usage("no password on stdin".into()));
    }
    let auth = oci_client::secrets::RegistryAuth::Basic(username.into(), password.clone());
    client(cli)
        .check_login(registry, &auth)
        .await
        .map_err(registry_error)?;
    let path = crate::oci::auth::store(registry, username, &password).map_err(registry_error)?;
    eprintln!(
        "logged in to {registry} as {username}; credentials in {}",
        path.display()
    );
    Ok(())
}
