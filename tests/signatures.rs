//! Cosign-compatible plugin signatures against the real docker-registry on
//! 127.0.0.1, with keys made by openssl (the independent implementation):
//! runner's signatures verify with `openssl dgst`, a plugin runs only when
//! a trusted key signed its digest, the operator's keys replace a file's,
//! a signature replayed from another plugin is refused, and signatures kept
//! in the store and in a bundle verify with the registry down.

use crate::common::oci_registry::Registry;
use crate::common::{Env, plugin, run};
use crate::oci::{pipeline, push, runner};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ECDSA P-256 key pair made by openssl: (private PKCS#8 PEM, public PEM).
pub(crate) fn openssl_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    let sh = format!(
        "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out {} \
         && openssl ec -in {} -pubout -out {} 2>/dev/null",
        private.display(),
        private.display(),
        public.display()
    );
    let status = Command::new("sh").args(["-c", &sh]).status().unwrap();
    assert!(
        status.success(),
        "openssl (Debian package openssl) must be installed"
    );
    (private, public)
}

fn http_get(url: &str, accept: &str) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("Accept: {accept}"), url])
        .output()
        .unwrap();
    assert!(out.status.success(), "GET {url} failed");
    out.stdout
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The signature manifest of `digest` in `repo`, as the registry serves it.
fn signature_manifest(
    registry: &Registry,
    repo: &str,
    digest: &str,
) -> (Vec<u8>, serde_json::Value) {
    let tag = format!("sha256-{}.sig", &digest["sha256:".len()..]);
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", registry.host());
    let bytes = http_get(&url, OCI_MANIFEST);
    let doc = serde_json::from_slice(&bytes).unwrap();
    (bytes, doc)
}

fn with_trust(file: &Path, keys: &[&str]) {
    let text = std::fs::read_to_string(file).unwrap();
    let list = keys
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(file, format!("{text}\n[trust]\nkeys = [{list}]\n")).unwrap();
}

#[test]
fn only_plugins_a_trusted_key_signed_run() {
    let mut registry = Registry::start();
    let env = Env::new();
    let (team_key, team_pub) = openssl_key_pair(env.path(), "team");
    let (other_key, other_pub) = openssl_key_pair(env.path(), "other");
    let (_, third_pub) = openssl_key_pair(env.path(), "third");
    let reference = registry.reference("team/probe:1");
    let digest = push(&env, &plugin("sandbox-probe"), &reference);
    let file = pipeline(&env, &reference);
    with_trust(&file, &["team.pub"]);
    let file_arg = file.to_str().unwrap();

    // Unsigned: refused, with how to sign, and nothing starts.
    let out = runner(&env, &["run", file_arg, "--json"]).expect_code(2);
    assert!(
        out.stderr.contains("is not signed by a trusted key"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("runner plugin sign --key"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("stage_started"), "{}", out.stdout);

    // Signed by a key the file does not trust: still refused.
    let sign = |key: &Path| {
        runner(
            &env,
            &["plugin", "sign", "--key", key.to_str().unwrap(), &reference],
        )
        .success()
        .stdout
        .trim()
        .to_string()
    };
    sign(&other_key);
    let out = runner(&env, &["run", file_arg, "--json"]).expect_code(2);
    assert!(
        out.stderr.contains("none by a trusted key"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("team.pub"), "{}", out.stderr);

    // Signed by the team's key: it runs, and says whose signature it checked.
    let signatures = sign(&team_key);
    let out = runner(&env, &["run", file_arg, "--json", "-v"]).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("signature verified"), "{}", out.stderr);
    // Signing again changes nothing (deterministic signatures, no duplicates).
    assert_eq!(sign(&team_key), signatures);

    // The layout is cosign's, and openssl verifies runner's signatures.
    let (bytes, doc) = signature_manifest(&registry, "team/probe", &digest);
    assert_eq!(format!("sha256:{}", sha256_hex(&bytes)), signatures);
    let layers = doc["layers"].as_array().unwrap();
    assert_eq!(
        layers.len(),
        2,
        "cosign appends: the other key's and the team's"
    );
    let mut verified = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        let blob = http_get(
            &format!(
                "http://{}/v2/team/probe/blobs/{}",
                registry.host(),
                layer["digest"].as_str().unwrap()
            ),
            "*/*",
        );
        let payload: serde_json::Value = serde_json::from_slice(&blob).unwrap();
        assert_eq!(
            payload["critical"]["image"]["docker-manifest-digest"],
            digest.as_str()
        );
        assert_eq!(
            payload["critical"]["type"],
            "cosign container image signature"
        );
        let signature = base64::engine::general_purpose::STANDARD
            .decode(
                layer["annotations"]["dev.cosignproject.cosign/signature"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let (payload_file, signature_file) = (
            env.path().join(format!("p{i}")),
            env.path().join(format!("s{i}")),
        );
        std::fs::write(&payload_file, &blob).unwrap();
        std::fs::write(&signature_file, &signature).unwrap();
        for public in [&team_pub, &other_pub] {
            let ok = Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(public)
                .arg("-signature")
                .arg(&signature_file)
                .arg(&payload_file)
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                verified.push(public.clone());
            }
        }
    }
    verified.sort();
    let mut expected = vec![team_pub.clone(), other_pub.clone()];
    expected.sort();
    assert_eq!(
        verified, expected,
        "each layer verifies with exactly its key"
    );

    // `plugin verify`, as `cosign verify --key`.
    let out = runner(&env, &["plugin", "verify", "--key", "team.pub", &reference]).success();
    assert!(out.stdout.contains("signed by team.pub"), "{}", out.stdout);
    runner(
        &env,
        &["plugin", "verify", "--key", "third.pub", &reference],
    )
    .expect_code(2);

    // The operator's keys replace the file's: a checkout cannot trust its own.
    let mut cmd = env.runner();
    cmd.args(["run", file_arg])
        .env("RUNNER_TRUST_KEYS", &third_pub);
    let out = run(&mut cmd).expect_code(2);
    assert!(out.stderr.contains("third.pub"), "{}", out.stderr);

    // --require-signature: a plugin file cannot run, and some key must be trusted.
    let local = env.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let local_file = pipeline_in(&local, &plugin("sandbox-probe"));
    let out = runner(
        &env,
        &["run", local_file.to_str().unwrap(), "--require-signature"],
    )
    .expect_code(2);
    assert!(
        out.stderr
            .contains("--require-signature runs only registry plugins"),
        "{}",
        out.stderr
    );
    let mut cmd = env.runner();
    cmd.args(["exec", "--require-signature", "--trust-key"])
        .arg(&team_pub)
        .arg("--plugin")
        .arg(plugin("sandbox-probe"))
        .args(["-c", "mode=echo"]);
    let out = run(&mut cmd).expect_code(2);
    assert!(
        out.stderr
            .contains("--require-signature runs only registry plugins"),
        "exec ran an unsigned file: {}",
        out.stderr
    );
    // Under --require-signature only the operator's keys count, not the file's.
    let out = runner(&env, &["run", file_arg, "--require-signature"]).expect_code(2);
    assert!(out.stderr.contains("no key is trusted"), "{}", out.stderr);
    let bare = pipeline_in(&local, &reference);
    let out = runner(
        &env,
        &["run", bare.to_str().unwrap(), "--require-signature"],
    )
    .expect_code(2);
    assert!(out.stderr.contains("no key is trusted"), "{}", out.stderr);
    runner(
        &env,
        &[
            "run",
            bare.to_str().unwrap(),
            "--require-signature",
            "--trust-key",
            team_pub.to_str().unwrap(),
        ],
    )
    .success();

    // Registry down: the signature kept in the store still verifies.
    registry.stop();
    let pinned = pipeline(&env, &registry.reference(&format!("team/probe@{digest}")));
    with_trust(&pinned, &["team.pub"]);
    let out = runner(&env, &["run", pinned.to_str().unwrap(), "-v"]).success();
    assert!(out.stderr.contains("signature verified"), "{}", out.stderr);
}

#[test]
fn a_signature_replayed_from_another_plugin_is_refused() {
    let registry = Registry::start();
    let env = Env::new();
    let (team_key, _) = openssl_key_pair(env.path(), "team");
    let good = registry.reference("team/probe:good");
    let evil = registry.reference("team/probe:evil");
    let good_digest = push(&env, &plugin("sandbox-probe"), &good);
    let evil_digest = push(&env, &plugin("hostile"), &evil);
    runner(
        &env,
        &["plugin", "sign", "--key", team_key.to_str().unwrap(), &good],
    )
    .success();
    // An attacker with push rights copies the good plugin's signature
    // manifest under the evil plugin's signature tag.
    let (bytes, _) = signature_manifest(&registry, "team/probe", &good_digest);
    let tag = format!("sha256-{}.sig", &evil_digest["sha256:".len()..]);
    let body = env.path().join("sig.json");
    std::fs::write(&body, &bytes).unwrap();
    let status = Command::new("curl")
        .args([
            "-sf",
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {OCI_MANIFEST}"),
            "--data-binary",
        ])
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "http://{}/v2/team/probe/manifests/{tag}",
            registry.host()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let file = pipeline(&env, &evil);
    with_trust(&file, &["team.pub"]);
    let out = runner(&env, &["run", file.to_str().unwrap(), "--json"]).expect_code(2);
    assert!(out.stderr.contains("of another artifact"), "{}", out.stderr);
    assert!(!out.stdout.contains("stage_started"), "{}", out.stdout);
}

#[test]
fn a_bundle_carries_signatures_and_refuses_unsigned_plugins() {
    let mut registry = Registry::start();
    let env = Env::new();
    let (team_key, team_pub) = openssl_key_pair(env.path(), "team");
    let reference = registry.reference("team/probe:1");
    push(&env, &plugin("sandbox-probe"), &reference);
    runner(
        &env,
        &[
            "plugin",
            "sign",
            "--key",
            team_key.to_str().unwrap(),
            &reference,
        ],
    )
    .success();
    let file = pipeline(&env, &reference);
    let file_arg = file.to_str().unwrap();
    let trust = team_pub.to_str().unwrap();
    runner(&env, &["plugin", "lock", file_arg, "--trust-key", trust]).success();
    let bundle = env.path().join("bundle");
    let bundle_arg = bundle.to_str().unwrap();
    runner(
        &env,
        &[
            "plugin",
            "bundle",
            "--lock",
            "runner.lock",
            "--out",
            bundle_arg,
            "--trust-key",
            trust,
        ],
    )
    .success();

    // An unsigned plugin is not bundled when keys are trusted.
    // (Other bytes: the same bytes have the same digest, which is signed.)
    let unsigned = registry.reference("team/unsigned:1");
    push(&env, &plugin("hostile"), &unsigned);
    let out = runner(
        &env,
        &[
            "plugin",
            "bundle",
            "--out",
            env.path().join("b2").to_str().unwrap(),
            "--trust-key",
            trust,
            &unsigned,
        ],
    )
    .expect_code(2);
    assert!(
        out.stderr.contains("is not signed by a trusted key"),
        "{}",
        out.stderr
    );

    // Offline, store gone: the bundle's signature verifies, the stage runs.
    std::fs::remove_dir_all(env.plugin_store()).unwrap();
    registry.stop();
    let mut cmd = env.runner();
    cmd.args([
        "run",
        file_arg,
        "--locked",
        "--require-signature",
        "--json",
        "-v",
    ])
    .env("RUNNER_TRUST_KEYS", &team_pub)
    .env("RUNNER_PLUGIN_PATH", &bundle);
    let out = run(&mut cmd).success();
    assert!(
        out.stdout.contains("\"marker\":\"probe\""),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("signature verified"), "{}", out.stderr);

    // The bundle's index edited to run another layer under the signed
    // digest: the entry is not used (and offline nothing else can serve it).
    let index_path = bundle.join("runner-bundle.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&index).unwrap();
    let layer = doc["plugins"][0]["layer"].as_str().unwrap().to_string();
    let evil = std::fs::read(plugin("hostile")).unwrap();
    let evil_digest = format!("sha256:{}", sha256_hex(&evil));
    std::fs::write(bundle.join("blobs/sha256").join(&evil_digest[7..]), &evil).unwrap();
    std::fs::write(&index_path, index.replace(&layer, &evil_digest)).unwrap();
    let offline_refused = || {
        let mut cmd = env.runner();
        cmd.args(["run", file_arg, "--locked", "--require-signature"])
            .env("RUNNER_TRUST_KEYS", &team_pub)
            .env("RUNNER_PLUGIN_PATH", &bundle);
        run(&mut cmd).expect_code(2)
    };
    let out = offline_refused();
    assert!(
        out.stderr.contains("the entry is not used"),
        "{}",
        out.stderr
    );
    std::fs::write(&index_path, index).unwrap();

    // The bundle's signature removed: offline, nothing can vouch for it.
    std::fs::remove_dir_all(bundle.join("signatures")).unwrap();
    let out = offline_refused();
    assert!(
        out.stderr.contains("its registry cannot be asked"),
        "{}",
        out.stderr
    );
}

fn pipeline_in(dir: &Path, plugin: &impl AsRef<std::ffi::OsStr>) -> PathBuf {
    let file = dir.join("runner.toml");
    std::fs::write(
        &file,
        format!(
            "service = \"svc\"\n\n[[stages]]\nname = \"one\"\nplugin = \"{}\"\nconfig = {{ mode = \"echo\", marker = \"probe\" }}\n",
            Path::new(plugin.as_ref()).display()
        ),
    )
    .unwrap();
    file
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(bytes))
}
