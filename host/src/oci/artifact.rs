//! The Wasm OCI artifact: what runner writes (config, manifest) and what it
//! accepts when it reads one. Follows the CNCF TAG Runtime "Wasm OCI
//! Artifact" layout that oci-wasm, wkg and Spin use.

use super::{Digest, OciError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// oras and other tools name a layer's file with this annotation (and oras
/// skips layers without it).
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// What the registry is asked for when pulling: manifests of every kind, so
/// a container image given as a plugin is recognised and named as such.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    DOCKER_LIST_MEDIA_TYPE,
];
/// Largest manifest or config runner reads (they are a few hundred bytes).
pub const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// The config blob (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339. runner writes `SOURCE_DATE_EPOCH` (or the Unix epoch) so
    /// the same component always gives the same digests.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub layer_digests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
    /// runner's own field: what the stage declares (`describe`), so
    /// `runner plugin inspect REF` shows it without pulling the component.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "runner")]
    pub description: Option<crate::describe::Description>,
}

/// What a component imports and exports (its world's names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComponentInfo {
    #[serde(default)]
    pub exports: Vec<String>,
    #[serde(default)]
    pub imports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The top-level import and export names of a component, read without
/// compiling it (nested modules and components are skipped).
pub fn component_info(bytes: &[u8]) -> Result<ComponentInfo, String> {
    use wasmparser::{Parser, Payload};
    let mut info = ComponentInfo::default();
    let mut depth = 0usize;
    let mut saw_component = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { encoding, .. } if depth == 0 && !saw_component => {
                if encoding != wasmparser::Encoding::Component {
                    return Err("a core WebAssembly module, not a component".into());
                }
                saw_component = true;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            // Types a world `use`s are imported and exported by name too;
            // they are not capabilities.
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| e.to_string())?;
                    if !matches!(import.ty, wasmparser::ComponentTypeRef::Type(_)) {
                        info.imports.push(import.name.name.to_string());
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| e.to_string())?;
                    if export.kind != wasmparser::ComponentExternalKind::Type {
                        info.exports.push(export.name.name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if info.exports.iter().any(|e| e == "run") {
        info.target = Some(format!("runner:plugin/stage@{}", crate::CONTRACT_VERSION));
    }
    Ok(info)
}

/// The creation time runner writes: `SOURCE_DATE_EPOCH` when set (the
/// reproducible-builds convention), else the Unix epoch.
pub fn created_time() -> Result<String, OciError> {
    let seconds = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| OciError::BadReference {
                text: text.clone(),
                reason: "SOURCE_DATE_EPOCH must be a number of seconds since 1970".into(),
            })?,
        Err(_) => 0,
    };
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    Ok(humantime::format_rfc3339_seconds(time).to_string())
}

/// An artifact ready to push: config and manifest bytes, deterministic for
/// the same component, title and creation time.
pub struct Built {
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub layer_digest: Digest,
    pub info: ComponentInfo,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Build the artifact for component `wasm`, its layer titled `title`.
pub fn build(
    wasm: &[u8],
    title: &str,
    created: String,
    description: Option<crate::describe::Description>,
) -> Result<Built, String> {
    let info = component_info(wasm)?;
    let layer_digest = Digest::of(wasm);
    let config = WasmConfig {
        created,
        author: None,
        architecture: "wasm".into(),
        os: "wasip2".into(),
        layer_digests: vec![layer_digest.to_string()],
        component: Some(info.clone()),
        description,
    };
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config_digest = Digest::of(&config);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        artifact_type: None,
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: config_digest.to_string(),
            size: config.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: LAYER_MEDIA_TYPE.into(),
            digest: layer_digest.to_string(),
            size: wasm.len() as u64,
            annotations: BTreeMap::from([(TITLE_ANNOTATION.to_string(), title.to_string())]),
        }],
    };
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    Ok(Built {
        manifest_digest: Digest::of(&manifest),
        config,
        config_digest,
        manifest,
        layer_digest,
        info,
    })
}

/// What a pulled manifest says about the plugin in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginManifest {
    pub config_digest: Digest,
    pub config_size: u64,
    pub layer_digest: Digest,
    pub layer_size: u64,
}

/// Check that `manifest` (bytes as pulled) describes a Wasm plugin, and
/// say what it is when it does not (a container image, an index, …).
pub fn parse_manifest(reference: &str, manifest: &[u8]) -> Result<PluginManifest, OciError> {
    let not_plugin = |found: String| OciError::NotAPlugin {
        reference: reference.to_string(),
        found,
    };
    let value: serde_json::Value = serde_json::from_slice(manifest)
        .map_err(|e| not_plugin(format!("its manifest is not JSON ({e})")))?;
    let media_type = value
        .get("mediaType")
        .and_then(|m| m.as_str())
        .unwrap_or("");
    if media_type == OCI_INDEX_MEDIA_TYPE
        || media_type == DOCKER_LIST_MEDIA_TYPE
        || value.get("manifests").is_some()
    {
        return Err(not_plugin(
            "it is a multi-platform image index (a container image for several platforms)".into(),
        ));
    }
    let parsed: Manifest = serde_json::from_value(value)
        .map_err(|e| not_plugin(format!("its manifest is not an OCI image manifest ({e})")))?;
    if parsed.config.media_type != CONFIG_MEDIA_TYPE {
        let kind = if parsed.config.media_type.contains("container.image")
            || parsed.config.media_type.contains("image.config")
        {
            "an ordinary container image"
        } else {
            "another kind of artifact"
        };
        return Err(not_plugin(format!(
            "it is {kind} (config media type {})",
            parsed.config.media_type
        )));
    }
    let wasm: Vec<&Descriptor> = parsed
        .layers
        .iter()
        .filter(|l| l.media_type == LAYER_MEDIA_TYPE)
        .collect();
    let [layer] = wasm.as_slice() else {
        return Err(not_plugin(format!(
            "it has {} application/wasm layers (a plugin has exactly one)",
            wasm.len()
        )));
    };
    let digest = |d: &str| {
        Digest::parse(d).map_err(|_| not_plugin(format!("its manifest names digest {d:?}")))
    };
    Ok(PluginManifest {
        config_digest: digest(&parsed.config.digest)?,
        config_size: parsed.config.size,
        layer_digest: digest(&layer.digest)?,
        layer_size: layer.size,
    })
}

/// Parse a config blob; a config that is not this schema is reported, not
/// fatal: the layer is what runs.
pub fn parse_config(config: &[u8]) -> Option<WasmConfig> {
    serde_json::from_slice(config).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Vec<u8> {
        wat::parse_str(
            r#"(component
                (import "runner:plugin/log@0.1.0" (instance))
                (core module $m (func (export "f")))
                (core instance $i (instantiate $m))
                (func $run (canon lift (core func $i "f")))
                (export "run" (func $run))
            )"#,
        )
        .unwrap()
    }

    #[test]
    fn the_same_component_always_gives_the_same_digests() {
        let wasm = component();
        let a = build(&wasm, "notify.wasm", "1970-01-01T00:00:00Z".into(), None).unwrap();
        let b = build(&wasm, "notify.wasm", "1970-01-01T00:00:00Z".into(), None).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.layer_digest, Digest::of(&wasm));
        assert_eq!(a.info.imports, vec!["runner:plugin/log@0.1.0"]);
        assert_eq!(a.info.exports, vec!["run"]);
        let parsed = parse_manifest("x", &a.manifest).unwrap();
        assert_eq!(parsed.layer_digest, a.layer_digest);
        assert_eq!(parsed.config_digest, a.config_digest);
        let manifest: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(
            manifest["layers"][0]["annotations"][TITLE_ANNOTATION],
            "notify.wasm"
        );
        let config = parse_config(&a.config).unwrap();
        assert_eq!(config.os, "wasip2");
        assert_eq!(config.layer_digests, vec![a.layer_digest.to_string()]);
        let later = build(&wasm, "notify.wasm", "2026-01-01T00:00:00Z".into(), None).unwrap();
        assert_ne!(later.manifest_digest, a.manifest_digest);
    }

    #[test]
    fn container_images_and_indexes_are_named_as_such() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},
            "layers":[]}"#;
        let e = parse_manifest("oci://r/x:1", image)
            .unwrap_err()
            .to_string();
        assert!(e.contains("an ordinary container image"), "{e}");
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let e = parse_manifest("oci://r/x:1", index)
            .unwrap_err()
            .to_string();
        assert!(e.contains("image index"), "{e}");
        let e = parse_manifest("oci://r/x:1", b"\xff")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn core_modules_are_not_components() {
        let module = wat::parse_str("(module)").unwrap();
        assert!(component_info(&module).unwrap_err().contains("core"));
        assert!(component_info(b"garbage").is_err());
    }
}
