//! consul-template fidelity, measured: `tests/oracle/` is a Go program that
//! renders a corpus of templates (`tests/oracle/corpus/`) with Go's own
//! `text/template` and consul-template's functions, rewritten from its
//! source, over a fixed data set (`tests/oracle/data.json`). These tests put
//! the same data into the embedded registry (with `runner catalog register`
//! and `runner kv put`) and into Consul (the test server, through Consul's
//! catalog API), render every template with `runner template render`, and
//! compare byte for byte: both render the same bytes, or both refuse.
//!
//! The templates where runner differs on purpose are [`DIVERGENCES`]; the
//! README lists each with its reason, and a test fails when an entry no
//! longer differs (so the list never outlives the difference).
//!
//! To measure another build of runner against the same corpus (an older
//! one, for a before/after count), set `RUNNER_ORACLE_RENDER_BIN` to its
//! binary: the data is still written by this build, and the counts are
//! printed (`-- --nocapture`) before the comparison fails.

use crate::common::Env;
use crate::common::consul::ConsulServer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Templates runner renders differently from consul-template on purpose
/// (their name in the corpus, and why). The README's "Deliberate
/// differences from consul-template" names each.
const DIVERGENCES: &[(&str, &str)] = &[
    (
        "031-printf-misc",
        "a printf verb that does not fit its argument fails the render; Go writes %!s(int=42) into the file",
    ),
    (
        "048-nil-empty-values",
        "the nil keyword cannot be passed to a function",
    ),
    (
        "114-containsAll-string-slice",
        "the contains* functions take any list; consul-template refuses a split result ([]string)",
    ),
    (
        "146-printf-go-types",
        "%T cannot print Go's type names: template values carry none",
    ),
    (
        "147-hex-float-literal",
        "hexadecimal float literals (0x1p-2) do not parse",
    ),
];

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Instance {
    node: String,
    node_address: String,
    #[serde(rename = "ID")]
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    status: String,
}

#[derive(serde::Deserialize)]
struct Data {
    instances: Vec<Instance>,
    kv: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
}

fn oracle_dir() -> PathBuf {
    crate::common::repo().join("tests/oracle")
}

fn data() -> Data {
    let text = std::fs::read_to_string(oracle_dir().join("data.json")).expect("oracle data");
    serde_json::from_str(&text).expect("oracle data parses")
}

/// The corpus, sorted by name.
fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(oracle_dir().join("corpus"))
        .expect("oracle corpus")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ctmpl"))
        .collect();
    files.sort();
    files
}

fn name(template: &Path) -> String {
    template.file_stem().unwrap().to_string_lossy().into_owned()
}

/// The oracle, built once per test process with Go from `PATH` (Debian's
/// `golang-go`, which `.ci/run` installs); `None` (the test skips) when Go
/// is missing outside CI.
fn oracle() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = crate::common::target_dir().join("template-oracle");
            let build = std::process::Command::new("go")
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(oracle_dir())
                // Only the standard library: nothing to download.
                .env("GOFLAGS", "-mod=mod")
                .env("GOPROXY", "off")
                .env(
                    "GOCACHE",
                    crate::common::target_dir().join("template-oracle-gocache"),
                )
                .output();
            match build {
                Ok(o) if o.status.success() => Some(out),
                Ok(o) => panic!(
                    "building the Go oracle failed:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => {
                    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
                    assert!(!ci, "no Go toolchain ({e}); CI installs golang-go");
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "template_oracle: skipped: no Go toolchain ({e}); install golang-go"
                    );
                    None
                }
            }
        })
        .as_deref()
}

/// What one template renders to, or that it was refused (and why).
type Outcome = Result<Vec<u8>, String>;

/// The oracle's rendering of the whole corpus over `data`.
fn oracle_renders(data_file: &Path, out: &Path) -> BTreeMap<String, Outcome> {
    let oracle = oracle().expect("checked by the caller");
    let status = std::process::Command::new(oracle)
        .arg(data_file)
        .arg(oracle_dir().join("corpus"))
        .arg(out)
        .status()
        .expect("run the oracle");
    assert!(status.success(), "the oracle failed");
    corpus()
        .iter()
        .map(|t| {
            let n = name(t);
            let outcome = match std::fs::read(out.join(format!("{n}.out"))) {
                Ok(bytes) => Ok(bytes),
                Err(_) => Err(std::fs::read_to_string(out.join(format!("{n}.err")))
                    .unwrap_or_else(|_| panic!("the oracle wrote neither {n}.out nor {n}.err"))),
            };
            (n, outcome)
        })
        .collect()
}

/// runner's rendering of every template, `global` being the registry flags
/// and `granted` the environment variables granted to templates.
fn runner_renders(
    env: &Env,
    global: &[String],
    granted: &BTreeMap<String, String>,
) -> BTreeMap<String, Outcome> {
    let out = env.dir.path().join("rendered");
    std::fs::create_dir_all(&out).unwrap();
    corpus()
        .iter()
        .map(|template| {
            let n = name(template);
            let dest = out.join(format!("{n}.out"));
            let mut cmd = env.runner();
            let other_build = std::env::var_os("RUNNER_ORACLE_RENDER_BIN");
            // An older build may not know --env.
            let granted = if other_build.is_some() {
                &BTreeMap::new()
            } else {
                granted
            };
            if let Some(bin) = other_build {
                cmd = assert_cmd::Command::new(bin);
                cmd.current_dir(env.dir.path())
                    .env("RUNNER_STATE_DIR", env.state_dir())
                    .env("RUNNER_CACHE_DIR", env.cache_dir())
                    .timeout(std::time::Duration::from_secs(60));
            }
            cmd.args(global).args(["template", "render"]);
            for (var, value) in granted {
                cmd.env(var, value).args(["--env", var]);
            }
            let run = cmd.arg(template).arg(&dest).output().unwrap();
            let outcome = if run.status.success() {
                Ok(std::fs::read(&dest).unwrap_or_default())
            } else {
                Err(String::from_utf8_lossy(&run.stderr).into_owned())
            };
            (n, outcome)
        })
        .collect()
}

/// Compare, report, and fail on any difference not listed as deliberate.
fn compare(backend: &str, oracle: &BTreeMap<String, Outcome>, runner: &BTreeMap<String, Outcome>) {
    let mut identical = 0;
    let mut unexpected = Vec::new();
    let mut stale = Vec::new();
    for (n, want) in oracle {
        let got = &runner[n];
        let same = match (want, got) {
            (Ok(a), Ok(b)) => a == b,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        let listed = DIVERGENCES.iter().any(|(d, _)| d == n);
        if same {
            identical += 1;
            if listed {
                stale.push(n.clone());
            }
        } else if !listed {
            unexpected.push(format!(
                "{n}:\n  consul-template: {}\n  runner:          {}",
                show(want),
                show(got)
            ));
        }
    }
    // The count the closing note quotes: `cargo test --test e2e
    // template_oracle:: -- --nocapture`.
    println!(
        "template oracle, {backend}: {identical} of {} templates identical ({} listed divergences)",
        oracle.len(),
        DIVERGENCES.len()
    );
    assert!(
        unexpected.is_empty(),
        "{backend}: {} template(s) render differently from consul-template:\n{}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert!(
        stale.is_empty(),
        "{backend}: listed as divergences but now identical (remove them from DIVERGENCES and the README): {stale:?}"
    );
}

fn show(outcome: &Outcome) -> String {
    match outcome {
        Ok(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
        Err(message) => format!("error: {}", message.trim()),
    }
}

#[test]
fn the_readme_lists_every_divergence() {
    let readme = std::fs::read_to_string(crate::common::repo().join("README.md")).unwrap();
    for (template, reason) in DIVERGENCES {
        assert!(
            readme.contains(template),
            "README.md does not list the divergence {template} ({reason})"
        );
    }
    assert!(
        corpus().len() >= 80,
        "the corpus covers consul-template with at least 80 templates"
    );
}

#[test]
fn the_embedded_registry_renders_the_corpus_as_consul_template() {
    if oracle().is_none() {
        return;
    }
    let env = Env::new();
    let data = data();
    for i in &data.instances {
        let mut cmd = env.runner();
        cmd.args(["catalog", "register", &i.name])
            .arg(format!("{}:{}", i.address, i.port))
            .args(["--id", &i.id, "--status", &i.status])
            .args(["--node", &i.node, "--node-address", &i.node_address]);
        for tag in &i.tags {
            cmd.args(["--tag", tag]);
        }
        for (k, v) in &i.meta {
            cmd.args(["--meta", &format!("{k}={v}")]);
        }
        cmd.assert().success();
    }
    for (key, value) in &data.kv {
        env.runner()
            .args(["kv", "put", key, value])
            .assert()
            .success();
    }
    let expected = oracle_renders(
        &oracle_dir().join("data.json"),
        &env.dir.path().join("oracle"),
    );
    let rendered = runner_renders(&env, &[], &data.env);
    compare("embedded registry", &expected, &rendered);
}

#[test]
fn consul_renders_the_corpus_as_consul_template() {
    if oracle().is_none() {
        return;
    }
    let env = Env::new();
    let server = ConsulServer::start(None);
    let data = data();
    for i in &data.instances {
        let check = if i.status == "maintenance" {
            serde_json::json!({"CheckID": format!("_service_maintenance:{}", i.id),
                "Name": "Service Maintenance Mode", "Status": "critical", "ServiceID": i.id})
        } else {
            serde_json::json!({"CheckID": format!("service:{}", i.id),
                "Name": format!("Service '{}' check", i.name), "Status": i.status, "ServiceID": i.id})
        };
        let body = serde_json::json!({
            "Node": i.node, "Address": i.node_address,
            "Service": {"ID": i.id, "Service": i.name, "Tags": i.tags, "Address": i.address,
                "Port": i.port, "Meta": i.meta},
            "Check": check,
        });
        server.catalog_register(&body);
    }
    for (key, value) in &data.kv {
        server.put(key, value);
    }
    // Consul lists itself among the services, on its own node.
    let mut with_consul: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(oracle_dir().join("data.json")).unwrap())
            .unwrap();
    with_consul["instances"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "Node": "runner-test", "NodeAddress": "127.0.0.1", "ID": "consul", "Name": "consul",
            "Address": "127.0.0.1", "Port": 8300, "Tags": [], "Meta": {}, "Status": "passing"
        }));
    let data_file = env.dir.path().join("data-with-consul.json");
    std::fs::write(&data_file, with_consul.to_string()).unwrap();
    let expected = oracle_renders(&data_file, &env.dir.path().join("oracle"));
    let rendered = runner_renders(&env, &["--consul".into(), server.url()], &data.env);
    compare("Consul", &expected, &rendered);
}
