//! `runner plugin sign|verify`: cosign-compatible signatures of registry
//! plugins (see [`crate::oci::signature`]).

use super::{client, registry_error};
use crate::cli::Cli;
use crate::commands::CommandError;
use crate::oci::keys::{PASSWORD_VAR, PrivateKey, TrustedKey};
use crate::oci::signature::{self, SignatureLayer};
use crate::oci::{OciError, OciRef};
use std::io::Write;
use std::path::{Path, PathBuf};

fn key_error(e: crate::oci::keys::KeyError) -> CommandError {
    CommandError::Usage(e.to_string())
}

pub(crate) async fn sign(cli: &Cli, key: &Path, reference: &str) -> Result<(), CommandError> {
    let reference = OciRef::parse(reference).map_err(registry_error)?;
    let password = std::env::var(PASSWORD_VAR).ok();
    let key = PrivateKey::load(key, password.as_deref()).map_err(key_error)?;
    let client = client(cli);
    // What is signed is a digest: the one written, or the tag's now. The
    // pull checks it is a runner plugin (and the digest, when written).
    let pulled = client
        .pull(&reference, true)
        .await
        .map_err(registry_error)?;
    let manifest = pulled.manifest_digest;
    if reference.digest().is_none() {
        tracing::warn!(
            "signing what {reference} points at now: {manifest} (layer {}); a tag can move \
             between a review and a signature: sign by digest (@sha256:...) to sign what was reviewed",
            pulled.plugin.layer_digest
        );
    }
    let repository = format!("{}/{}", reference.registry(), reference.repository());
    let payload = signature::payload(&repository, &manifest);
    let layer = SignatureLayer::new(payload.clone(), &key.sign(&payload));
    let signatures = client
        .push_signature(&reference, &manifest, layer)
        .await
        .map_err(registry_error)?;
    eprintln!(
        "signed {} with {} ({}); the signature is tag {}",
        reference.pinned(&manifest),
        key.public.path.display(),
        key.public.short(),
        signature::tag(&manifest)
    );
    writeln!(std::io::stdout().lock(), "{signatures}")?;
    Ok(())
}

pub(crate) async fn verify(
    cli: &Cli,
    key_files: &[PathBuf],
    reference: &str,
) -> Result<(), CommandError> {
    let keys = if key_files.is_empty() {
        crate::commands::host::trusted_keys(cli)?
    } else {
        key_files
            .iter()
            .map(|path| TrustedKey::load(path).map_err(key_error))
            .collect::<Result<Vec<_>, _>>()?
    };
    if keys.is_empty() {
        return Err(CommandError::Usage(
            "no key to verify against: give --key FILE (a public key, as cosign.pub) or \
             --trust-key FILE"
                .into(),
        ));
    }
    let reference = OciRef::parse(reference).map_err(registry_error)?;
    let client = client(cli);
    let pulled = client
        .pull(&reference, true)
        .await
        .map_err(registry_error)?;
    let manifest = pulled.manifest_digest;
    let plugin = reference.pinned(&manifest).to_string();
    let signatures = client
        .pull_signatures(&reference, &manifest)
        .await
        .map_err(registry_error)?;
    let layers = signatures.map(|s| s.layers).unwrap_or_default();
    match signature::verify(&keys, &manifest, &layers) {
        Ok(key) => {
            writeln!(
                std::io::stdout().lock(),
                "{plugin} signed by {} ({})",
                key.path.display(),
                key.fingerprint
            )?;
            Ok(())
        }
        Err(unverified) if unverified.signatures == 0 => Err(registry_error(OciError::Unsigned {
            plugin: plugin.clone(),
            detail: format!(
                "it has no signature (no tag {}); sign it with `runner plugin sign --key KEY {plugin}`",
                signature::tag(&manifest)
            ),
        })),
        Err(unverified) => Err(registry_error(OciError::Unsigned {
            plugin,
            detail: crate::oci::resolve::describe_failures(&[unverified], &keys),
        })),
    }
}
