//! Pushing and pulling plugin artifacts through `oci-client`, with every
//! size bounded and every blob verified against its digest.

use super::artifact::{self, ACCEPTED_MANIFESTS, MAX_METADATA_BYTES, PluginManifest};
use super::signature::{self, LayerRef, SignatureLayer, Signatures};
use super::{Digest, OciError, OciRef, auth};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use std::time::Duration;

/// A client for plugin registries. Plain HTTP is used only for a registry
/// on this machine or one named in `insecure`.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    insecure: Vec<String>,
    /// Largest plugin layer accepted (the runtime's plugin size cap).
    max_layer_bytes: u64,
}

/// What a push wrote.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest: Digest,
    pub layer: Digest,
    pub size: u64,
}

/// A plugin as pulled, every blob verified against its digest.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub plugin: PluginManifest,
    pub config: Vec<u8>,
    /// `None` when only the metadata was asked for.
    pub layer: Option<Vec<u8>>,
}

impl RegistryClient {
    pub fn new(insecure: Vec<String>, max_layer_bytes: u64) -> Self {
        // reqwest (through oci-client) uses the process's rustls provider;
        // runner's TLS is ring everywhere. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            insecure,
            max_layer_bytes,
        }
    }

    fn client(&self, registry: &str) -> oci_client::Client {
        let plain = super::is_loopback(registry) || self.insecure.iter().any(|h| h == registry);
        oci_client::Client::new(ClientConfig {
            protocol: if plain {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: None,
            ..ClientConfig::default()
        })
    }

    fn login(reference: &OciRef) -> Result<RegistryAuth, OciError> {
        auth::credentials(reference.registry()).map(|(auth, _)| auth)
    }

    /// Check `auth` against `registry` (for `runner plugin login`): an
    /// authenticated request to a repository path, as the token flow needs.
    pub async fn check_login(&self, registry: &str, auth: &RegistryAuth) -> Result<(), OciError> {
        let reference = OciRef::parse(&format!("{registry}/runner-login-check:latest"))?;
        let client = self.client(registry);
        client
            .auth(
                reference.reference(),
                auth,
                oci_client::RegistryOperation::Pull,
            )
            .await
            .map_err(|e| map_error(&reference, e))?;
        // Basic-auth registries answer the token request without checking:
        // ask for something that needs the credentials. An unknown
        // repository is an answer given to an authorised client.
        match client
            .list_tags(reference.reference(), auth, Some(1), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(OciDistributionError::RegistryError { envelope, .. })
                if envelope
                    .errors
                    .iter()
                    .all(|e| e.code == OciErrorCode::NameUnknown) =>
            {
                Ok(())
            }
            Err(e) => match map_error(&reference, e) {
                OciError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    /// Push component `wasm` to `reference` (a tag); its layer is titled
    /// `title`. Same bytes, title and `SOURCE_DATE_EPOCH` → same digest.
    pub async fn push(
        &self,
        reference: &OciRef,
        wasm: &[u8],
        title: &str,
        description: Option<crate::describe::Description>,
    ) -> Result<Pushed, OciError> {
        let built = artifact::build(wasm, title, artifact::created_time()?, description).map_err(
            |found| OciError::NotAPlugin {
                reference: title.to_string(),
                found: format!("it is not a WebAssembly component ({found})"),
            },
        )?;
        let auth = Self::login(reference)?;
        let client = self.client(reference.registry());
        let image = reference.reference();
        client
            .store_auth_if_needed(reference.registry(), &auth)
            .await;
        let map = |e| map_error(reference, e);
        client
            .push_blob(image, wasm.to_vec(), built.layer_digest.as_str())
            .await
            .map_err(map)?;
        client
            .push_blob(image, built.config.clone(), built.config_digest.as_str())
            .await
            .map_err(map)?;
        push_manifest(&client, reference, built.manifest.clone()).await?;
        Ok(Pushed {
            manifest: built.manifest_digest,
            layer: built.layer_digest,
            size: wasm.len() as u64,
        })
    }

    /// Pull the plugin at `reference`: its manifest and config, and its
    /// layer unless `metadata_only`. A reference with a digest must get
    /// exactly that manifest.
    pub async fn pull(&self, reference: &OciRef, metadata_only: bool) -> Result<Pulled, OciError> {
        let auth = Self::login(reference)?;
        let client = self.client(reference.registry());
        let image = reference.reference();
        let map = |e| map_error(reference, e);
        let (manifest, _) = client
            .pull_manifest_raw(image, &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(map)?;
        if manifest.len() as u64 > MAX_METADATA_BYTES {
            return Err(OciError::TooLarge {
                what: format!("the manifest of {reference}"),
                size: manifest.len() as u64,
                cap: MAX_METADATA_BYTES,
            });
        }
        let manifest_digest = Digest::of(&manifest);
        if let Some(expected) = reference.digest()
            && *expected != manifest_digest
        {
            return Err(OciError::DigestMismatch {
                what: format!("the manifest the registry sent for {reference}"),
                expected: expected.clone(),
                actual: manifest_digest,
                hint: String::new(),
            });
        }
        let plugin = artifact::parse_manifest(&reference.to_string(), &manifest)?;
        let config = self
            .blob(
                &client,
                reference,
                &plugin.config_digest,
                plugin.config_size,
                MAX_METADATA_BYTES,
                "config",
            )
            .await?;
        let layer = if metadata_only {
            None
        } else {
            Some(
                self.blob(
                    &client,
                    reference,
                    &plugin.layer_digest,
                    plugin.layer_size,
                    self.max_layer_bytes,
                    "component",
                )
                .await?,
            )
        };
        Ok(Pulled {
            manifest_digest,
            manifest: manifest.to_vec(),
            plugin,
            config,
            layer,
        })
    }

    /// The cosign signatures of plugin `manifest` in `reference`'s
    /// repository (the `sha256-HEX.sig` tag), every payload verified
    /// against its digest; `None` when it has none.
    pub async fn pull_signatures(
        &self,
        reference: &OciRef,
        manifest: &Digest,
    ) -> Result<Option<Signatures>, OciError> {
        let sig_ref = signature_reference(reference, manifest)?;
        let auth = Self::login(&sig_ref)?;
        let client = self.client(sig_ref.registry());
        let (bytes, _) = match client
            .pull_manifest_raw(sig_ref.reference(), &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| map_error(&sig_ref, e))
        {
            Ok(found) => found,
            Err(OciError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(OciError::TooLarge {
                what: format!("the signature manifest of {reference}"),
                size: bytes.len() as u64,
                cap: MAX_METADATA_BYTES,
            });
        }
        let refs = signature::parse_manifest(&bytes).map_err(|detail| OciError::Registry {
            registry: sig_ref.registry().into(),
            detail: format!("the signatures of {reference}: {detail}"),
        })?;
        let mut layers = Vec::with_capacity(refs.len());
        for layer in refs {
            let payload = self
                .blob(
                    &client,
                    &sig_ref,
                    &layer.digest,
                    layer.size,
                    signature::MAX_PAYLOAD_BYTES,
                    "signature payload",
                )
                .await?;
            layers.push(SignatureLayer {
                digest: layer.digest,
                payload,
                signature: layer.signature,
            });
        }
        Ok(Some(Signatures {
            manifest_digest: Digest::of(&bytes),
            manifest: bytes.to_vec(),
            layers,
        }))
    }

    /// Add `layer` to the signatures of plugin `manifest` (kept: the ones
    /// already there, as cosign appends); returns the signature manifest's
    /// digest.
    pub async fn push_signature(
        &self,
        reference: &OciRef,
        manifest: &Digest,
        layer: SignatureLayer,
    ) -> Result<Digest, OciError> {
        let sig_ref = signature_reference(reference, manifest)?;
        let mut refs: Vec<LayerRef> = match self.pull_signatures(reference, manifest).await? {
            Some(existing) => existing
                .layers
                .into_iter()
                .map(|l| LayerRef {
                    size: l.payload.len() as u64,
                    digest: l.digest,
                    signature: l.signature,
                })
                .collect(),
            None => Vec::new(),
        };
        let auth = Self::login(&sig_ref)?;
        let client = self.client(sig_ref.registry());
        client.store_auth_if_needed(sig_ref.registry(), &auth).await;
        let map = |e| map_error(&sig_ref, e);
        let new = LayerRef {
            digest: layer.digest.clone(),
            size: layer.payload.len() as u64,
            signature: layer.signature.clone(),
        };
        if !refs.contains(&new) {
            client
                .push_blob(sig_ref.reference(), layer.payload, layer.digest.as_str())
                .await
                .map_err(map)?;
            refs.push(new);
        }
        let (config, config_digest, bytes) = signature::build_manifest(&refs);
        client
            .push_blob(sig_ref.reference(), config, config_digest.as_str())
            .await
            .map_err(map)?;
        let digest = Digest::of(&bytes);
        push_manifest(&client, &sig_ref, bytes).await?;
        Ok(digest)
    }

    /// One blob, at most `cap` bytes whatever the manifest or the server
    /// claims, verified against `digest`.
    async fn blob(
        &self,
        client: &oci_client::Client,
        reference: &OciRef,
        digest: &Digest,
        declared: u64,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, OciError> {
        let too_large = |size| OciError::TooLarge {
            what: format!("the {what} of {reference}"),
            size,
            cap,
        };
        if declared > cap {
            return Err(too_large(declared));
        }
        let mut stream = client
            .pull_blob_stream(reference.reference(), digest.as_str())
            .await
            .map_err(|e| map_error(reference, e))?;
        let mut bytes = Vec::with_capacity(declared.min(cap) as usize);
        while let Some(chunk) = stream.next().await {
            // oci-client checks the digest as the bytes arrive.
            let chunk = chunk.map_err(|e| {
                let detail = e.to_string();
                if detail.contains("digest") {
                    OciError::CorruptBlob {
                        what: format!("the {what} of {reference}"),
                        detail,
                    }
                } else {
                    OciError::Registry {
                        registry: reference.registry().into(),
                        detail: format!("reading the {what} of {reference}: {detail}"),
                    }
                }
            })?;
            if (bytes.len() + chunk.len()) as u64 > cap {
                return Err(too_large((bytes.len() + chunk.len()) as u64));
            }
            bytes.extend_from_slice(&chunk);
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(OciError::DigestMismatch {
                what: format!("the {what} of {reference}"),
                expected: digest.clone(),
                actual,
                hint: String::new(),
            });
        }
        Ok(bytes)
    }
}

/// Put `manifest` (an OCI image manifest, as runner writes them) at `reference`.
async fn push_manifest(
    client: &oci_client::Client,
    reference: &OciRef,
    manifest: Vec<u8>,
) -> Result<(), OciError> {
    let content_type = artifact::MANIFEST_MEDIA_TYPE
        .parse()
        .map_err(|_| OciError::Registry {
            registry: reference.registry().into(),
            detail: "bad manifest media type".into(),
        })?;
    client
        .push_manifest_raw(reference.reference(), manifest, content_type)
        .await
        .map(|_| ())
        .map_err(|e| map_error(reference, e))
}

/// Where the signatures of `manifest` live: its repository, tag `sha256-HEX.sig`.
fn signature_reference(reference: &OciRef, manifest: &Digest) -> Result<OciRef, OciError> {
    OciRef::parse(&format!(
        "{}/{}:{}",
        reference.registry(),
        reference.repository(),
        signature::tag(manifest)
    ))
}

/// oci-client's errors, said in terms of what to do.
fn map_error(reference: &OciRef, error: OciDistributionError) -> OciError {
    let registry = reference.registry().to_string();
    match error {
        OciDistributionError::AuthenticationFailure(detail) => OciError::Auth {
            registry,
            detail: format!(" ({detail})"),
        },
        OciDistributionError::UnauthorizedError { .. } => OciError::Auth {
            registry,
            detail: String::new(),
        },
        OciDistributionError::ImageManifestNotFoundError(_) => OciError::NotFound {
            reference: reference.to_string(),
            detail: String::new(),
        },
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => {
            OciError::Unreachable {
                registry,
                detail: crate::error_chain::error_chain(&e),
            }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let has = |code: OciErrorCode| envelope.errors.iter().any(|e| e.code == code);
            if has(OciErrorCode::Unauthorized) || has(OciErrorCode::Denied) {
                OciError::Auth {
                    registry,
                    detail: String::new(),
                }
            } else if has(OciErrorCode::ManifestUnknown) || has(OciErrorCode::NameUnknown) {
                OciError::NotFound {
                    reference: reference.to_string(),
                    detail: String::new(),
                }
            } else {
                OciError::Registry {
                    registry,
                    detail: envelope.to_string(),
                }
            }
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => OciError::Auth {
            registry,
            detail: String::new(),
        },
        OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound {
            reference: reference.to_string(),
            detail: String::new(),
        },
        other => OciError::Registry {
            registry,
            detail: crate::error_chain::error_chain(&other),
        },
    }
}
