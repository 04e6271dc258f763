//! Cosign-compatible plugin signatures (cosign's "simple signing" with a
//! key pair, as `cosign sign --key` writes them for a registry without the
//! referrers API): the signature of a plugin whose manifest digest is
//! `sha256:HEX` is an OCI image tagged `sha256-HEX.sig` in the same
//! repository, each layer a simple-signing payload naming that digest,
//! with the base64 ECDSA signature in its `dev.cosignproject.cosign/signature`
//! annotation. Verifying is `cosign verify --key KEY --insecure-ignore-tlog`:
//! runner works offline, so there is no transparency log.
//!
//! Signatures are fetched once, kept in the store (and in bundles) and
//! checked again on every load, so a run from a bundle verifies offline.

use super::Digest;
use super::keys::TrustedKey;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a cosign signature payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Signatures read for one plugin; more are ignored.
pub const MAX_SIGNATURES: usize = 64;
/// A payload is a few hundred bytes.
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;
/// A base64 DER P-256 signature is under 100 characters.
const MAX_SIGNATURE_CHARS: usize = 1024;

/// The tag a plugin's signatures live under.
pub fn tag(manifest: &Digest) -> String {
    format!("sha256-{}.sig", manifest.hex())
}

/// cosign's simple-signing payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    pub critical: Critical,
    /// cosign's `-a key=value` annotations; runner writes none.
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Critical {
    pub identity: Identity,
    pub image: Image,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

/// The payload signing `manifest` of `repository` (`REGISTRY/REPO`), as
/// cosign serialises it.
pub fn payload(repository: &str, manifest: &Digest) -> Vec<u8> {
    let payload = Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: repository.to_string(),
            },
            image: Image {
                docker_manifest_digest: manifest.to_string(),
            },
            kind: SIGNATURE_TYPE.into(),
        },
        optional: None,
    };
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// One signature: its payload (a layer of the signature image) and the
/// signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    pub digest: Digest,
    pub payload: Vec<u8>,
    /// Base64 ASN.1 DER, as in the annotation.
    pub signature: String,
}

impl SignatureLayer {
    pub fn new(payload: Vec<u8>, signature: &[u8]) -> Self {
        Self {
            digest: Digest::of(&payload),
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
            payload,
        }
    }
}

/// A layer of a signature manifest, before its payload is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRef {
    pub digest: Digest,
    pub size: u64,
    pub signature: String,
}

/// The signatures of one plugin, as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub layers: Vec<SignatureLayer>,
}

#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(default)]
    layers: Vec<DescriptorDoc>,
}

#[derive(Deserialize)]
struct DescriptorDoc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The simple-signing layers of a signature manifest (others skipped, at
/// most [`MAX_SIGNATURES`], each at most [`MAX_PAYLOAD_BYTES`]).
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<LayerRef>, String> {
    let doc: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| format!("not an image manifest: {e}"))?;
    let mut layers = Vec::new();
    for layer in doc.layers {
        if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE || layers.len() == MAX_SIGNATURES {
            continue;
        }
        let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        if layer.size > MAX_PAYLOAD_BYTES || signature.len() > MAX_SIGNATURE_CHARS {
            continue;
        }
        let digest = Digest::parse(&layer.digest).map_err(|e| e.to_string())?;
        layers.push(LayerRef {
            digest,
            size: layer.size,
            signature: signature.clone(),
        });
    }
    Ok(layers)
}

/// A signature image: its config and manifest, for `layers`. The config is
/// the one cosign writes (go-containerregistry's empty image with the
/// payloads as its layers), so the same signatures give the same digest.
pub fn build_manifest(layers: &[LayerRef]) -> (Vec<u8>, Digest, Vec<u8>) {
    let epoch = "0001-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": "",
        "created": epoch,
        "history": [{ "created": epoch }],
        "os": "",
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>(),
        },
        "config": {},
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let config_digest = Digest::of(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": super::artifact::MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": OCI_CONFIG_MEDIA_TYPE,
            "size": config.len(),
            "digest": config_digest.to_string(),
        },
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
            "size": l.size,
            "digest": l.digest.to_string(),
            "annotations": { SIGNATURE_ANNOTATION: l.signature },
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    (config, config_digest, manifest)
}

/// Why no signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    /// How many signatures there were.
    pub signatures: usize,
    /// What was wrong with each, in words.
    pub reasons: Vec<String>,
}

/// The first of `keys` that signed a payload naming plugin `manifest`.
pub fn verify<'k>(
    keys: &'k [TrustedKey],
    manifest: &Digest,
    layers: &[SignatureLayer],
) -> Result<&'k TrustedKey, Unverified> {
    let mut reasons = Vec::new();
    for layer in layers {
        let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(&layer.signature)
        else {
            reasons.push("a signature that is not base64".to_string());
            continue;
        };
        let Some(key) = keys.iter().find(|k| k.verifies(&layer.payload, &signature)) else {
            reasons.push("a signature by a key runner does not trust".to_string());
            continue;
        };
        match serde_json::from_slice::<Payload>(&layer.payload) {
            Ok(payload)
                if payload.critical.kind == SIGNATURE_TYPE
                    && payload.critical.image.docker_manifest_digest == manifest.as_str() =>
            {
                return Ok(key);
            }
            Ok(payload) => reasons.push(format!(
                "a signature by {} of another artifact ({})",
                key.short(),
                payload
                    .critical
                    .image
                    .docker_manifest_digest
                    .chars()
                    .take(80)
                    .collect::<String>()
            )),
            Err(_) => reasons.push(format!(
                "a signature by {} of something that is not a cosign payload",
                key.short()
            )),
        }
    }
    Err(Unverified {
        signatures: layers.len(),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::super::keys::{PrivateKey, tests as key_tests};
    use super::*;

    fn keys(dir: &std::path::Path, seed: u8) -> (PrivateKey, TrustedKey) {
        let key = key_tests::test_key(seed);
        let private = dir.join(format!("{seed}.pem"));
        use p256::pkcs8::EncodePrivateKey;
        std::fs::write(
            &private,
            key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let public = dir.join(format!("{seed}.pub"));
        key_tests::write_public(&public, &key);
        (
            PrivateKey::load(&private, None).unwrap(),
            TrustedKey::load(&public).unwrap(),
        )
    }

    #[test]
    fn a_signature_verifies_only_for_its_digest_and_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, trusted) = keys(dir.path(), 1);
        let (stranger, other) = keys(dir.path(), 2);
        let digest = Digest::of(b"plugin manifest");
        let body = payload("127.0.0.1:5000/team/notify", &digest);
        assert_eq!(
            String::from_utf8(body.clone()).unwrap(),
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/team/notify\"}},\
                 \"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\
                 \"optional\":null}}"
            ),
            "cosign's payload, field for field"
        );
        let layer = SignatureLayer::new(body.clone(), &signer.sign(&body));
        let trust = [other.clone(), trusted.clone()];
        assert_eq!(
            verify(&trust, &digest, std::slice::from_ref(&layer))
                .unwrap()
                .fingerprint,
            trusted.fingerprint
        );
        // Another plugin's digest, a key nobody trusts, a payload edited
        // after signing, a signature that is not base64.
        let e = verify(
            &trust,
            &Digest::of(b"another"),
            std::slice::from_ref(&layer),
        )
        .unwrap_err();
        assert!(e.reasons[0].contains("of another artifact"), "{e:?}");
        let by_stranger = SignatureLayer::new(body.clone(), &stranger.sign(&body));
        let e = verify(std::slice::from_ref(&trusted), &digest, &[by_stranger]).unwrap_err();
        assert!(e.reasons[0].contains("does not trust"), "{e:?}");
        let mut edited = layer.clone();
        edited.payload = payload("127.0.0.1:5000/team/evil", &digest);
        assert!(verify(&trust, &digest, &[edited]).is_err());
        let mut garbled = layer.clone();
        garbled.signature = "!!!".into();
        assert!(verify(&trust, &digest, &[garbled]).is_err());
        assert_eq!(verify(&trust, &digest, &[]).unwrap_err().signatures, 0);
    }

    #[test]
    fn signature_manifests_round_trip_and_reads_are_bounded() {
        let digest = Digest::of(b"payload");
        let layers = vec![LayerRef {
            digest: digest.clone(),
            size: 7,
            signature: "MEUC".into(),
        }];
        let (config, config_digest, manifest) = build_manifest(&layers);
        assert_eq!(Digest::of(&config), config_digest);
        assert_eq!(parse_manifest(&manifest).unwrap(), layers);
        assert_eq!(build_manifest(&layers).2, manifest, "reproducible");
        // Oversized payloads, huge annotations, other media types and more
        // than MAX_SIGNATURES layers are not read.
        let many: Vec<serde_json::Value> = (0..MAX_SIGNATURES + 10)
            .map(|i| {
                serde_json::json!({
                    "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
                    "size": if i == 0 { MAX_PAYLOAD_BYTES + 1 } else { 10 },
                    "digest": digest.to_string(),
                    "annotations": { SIGNATURE_ANNOTATION: if i == 1 { "A".repeat(5000) } else { "MEUC".into() } },
                })
            })
            .chain([serde_json::json!({"mediaType": "application/octet-stream", "size": 1, "digest": digest.to_string()})])
            .collect();
        let doc = serde_json::to_vec(&serde_json::json!({ "layers": many })).unwrap();
        assert_eq!(parse_manifest(&doc).unwrap().len(), MAX_SIGNATURES);
        assert_eq!(tag(&digest), format!("sha256-{}.sig", digest.hex()));
        let bad = serde_json::json!({"layers": [{"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "size": 1, "digest": "sha256:../../x", "annotations": {SIGNATURE_ANNOTATION: "x"}}]});
        assert!(parse_manifest(&serde_json::to_vec(&bad).unwrap()).is_err());
    }
}
