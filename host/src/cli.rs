//! Command-line definitions (clap). Behaviour lives in [`crate::commands`].

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Run deployment pipeline stages as sandboxed WebAssembly components",
    long_about = "Run deployment pipeline stages as sandboxed WebAssembly components.\n\n\
        Every stage is a plugin (a .wasm component built against wit/) that can touch only what \
        it was granted: KV prefixes, catalog services, HTTP origins, directories.\n\n\
        Exit status: 0 success, 1 stage failed, 2 usage or config error, \
        3 plugin fault (trap, limit, invalid component).",
    after_help = "Examples:\n  \
        runner validate runner.toml                  # check a pipeline without running it\n  \
        runner run runner.toml --junit reports.xml   # run every stage in order\n  \
        runner status books-ms                       # color, containers, proxy, lock, deploys\n  \
        runner exec --plugin color.wasm --service books-ms --allow-kv books-ms/ --config commit=true\n  \
        runner plugin new my-stage --lang python     # start your own stage\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=runner=debug) or pass -v for more."
)]
pub struct Cli {
    /// Where the embedded registry keeps its state.
    #[arg(
        long,
        global = true,
        env = "RUNNER_STATE_DIR",
        default_value = ".runner",
        value_name = "DIR"
    )]
    pub state_dir: PathBuf,

    /// Use Consul as the registry (KV, catalog) instead of the embedded one,
    /// e.g. http://127.0.0.1:8500.
    #[arg(long, global = true, env = "CONSUL_HTTP_ADDR", value_name = "URL")]
    pub consul: Option<String>,

    /// Consul ACL token, sent with every Consul request.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub consul_token: Option<String>,

    /// Where precompiled plugins are cached [default: $XDG_CACHE_HOME/runner/components].
    #[arg(long, global = true, env = "RUNNER_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile plugins on every run instead of using the artifact cache.
    #[arg(long, global = true)]
    pub no_cache: bool,

    /// Where plugins pulled from registries are kept, by digest
    /// [default: $XDG_CACHE_HOME/runner/plugins].
    #[arg(long, global = true, env = "RUNNER_PLUGIN_STORE", value_name = "DIR")]
    pub plugin_store: Option<PathBuf>,

    /// A registry (HOST:PORT) to speak plain HTTP to though it is not on
    /// this machine (loopback registries always may), repeatable.
    #[arg(
        long,
        global = true,
        env = "RUNNER_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    pub insecure_registry: Vec<String>,

    /// A public key (PEM, as cosign.pub) whose cosign signatures registry
    /// plugins must carry, repeatable; replaces a file's `[trust] keys`.
    #[arg(
        long,
        global = true,
        env = "RUNNER_TRUST_KEYS",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub trust_key: Vec<PathBuf>,

    /// Run only registry plugins signed by a trusted key: no plugin files,
    /// no unsigned plugins, and some key must be trusted (what CI uses).
    #[arg(long, global = true, env = "RUNNER_REQUIRE_SIGNATURE")]
    pub require_signature: bool,

    /// More output: -v shows debug logs and wasm backtraces, -vv traces.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: the stages of a runner.toml, in order.
    Run(PipelineArgs),
    /// Check a pipeline file without running anything.
    Validate(ValidateArgs),
    /// A service now: its color, containers, proxy, lock, an interrupted deploy
    /// (and what recovery will do) and last deploys.
    Status(ServiceArgs),
    /// A service's deploys: when, who, version, color, outcome, duration.
    History(HistoryArgs),
    /// Bring the previous color back (the deploy stage with action=rollback).
    Rollback(ServiceArgs),
    /// Continue a deploy paused at its promotion gate (promotion=manual).
    Promote(ServiceArgs),
    /// Finish or undo a deploy that died (killed, machine lost): the deploy
    /// stage with action=recover reads the service's deploy journal and, by
    /// where the deploy died, removes the candidate (before the switch),
    /// switches back to the last known-good color (after the switch, before
    /// the post-integration tests passed), or finishes (after). `runner
    /// status` shows an interrupted deploy and what this will do; the next
    /// `runner run` of the service recovers first by itself.
    Recover(ServiceArgs),
    /// Run one stage plugin once.
    Exec(Box<ExecArgs>),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Read and write the registry's key/value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Read the registry's service catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Show or break a service's deploy lock.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Render consul-template templates from the registry.
    #[command(subcommand)]
    Template(TemplateCommand),
}

/// How a pipeline run shows itself and where it finds plugins.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// One JSON event per line on stdout (stage started/finished, progress,
    /// log, outcome) instead of progress display; logs stay on stderr.
    #[arg(long)]
    pub json: bool,

    /// Write the JUnit reports of every stage and hook, merged, to PATH.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,

    /// A directory to find plugins named without a path in (before
    /// RUNNER_PLUGIN_PATH and the file's plugins/ directory), repeatable.
    #[arg(long, value_name = "DIR")]
    pub plugin_path: Vec<PathBuf>,

    /// Refuse to run unless runner.lock (beside the file) pins every
    /// registry plugin and nothing else, and each component imports only
    /// what the lock records (what CI uses).
    #[arg(long)]
    pub locked: bool,

    /// How long to wait for a deploy lock someone else holds before failing.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: Duration,

    /// The Docker engine [default: the file's targets.docker, then the local socket].
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    runner run                                  # ./runner.toml\n  \
    runner run examples/pipeline/runner.toml --junit reports/all.xml\n  \
    runner run --json | jq -c 'select(.event == \"stage_finished\")'\n\n\
    On a terminal each stage shows a spinner with its latest progress; in CI (no terminal, or CI\n\
    set) plain timestamped lines. Exit status: 0 done (or paused at a promotion gate), 1 a stage\n\
    failed, 2 the file is invalid, 3 a plugin faulted.")]
pub struct PipelineArgs {
    /// The pipeline file.
    #[arg(default_value = "runner.toml", value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Checks, without running anything: unknown keys and bad values, plugins \
    that cannot be found, plugins whose imports their grants do not cover, grant patterns, hooks \
    and proxies that are not defined, and ${stage.key} references to stages that do not run \
    earlier. Every problem names the file and line. Exit status 0 valid, 2 not."
)]
pub struct ValidateArgs {
    /// The pipeline file.
    #[arg(default_value = "runner.toml", value_name = "FILE")]
    pub file: PathBuf,

    /// Treat warnings (imports the stage's grants do not cover) as errors.
    #[arg(long)]
    pub strict: bool,

    /// A directory to find plugins named without a path in, repeatable.
    #[arg(long, value_name = "DIR")]
    pub plugin_path: Vec<PathBuf>,

    /// Fail unless runner.lock pins every registry plugin (as `run --locked`).
    #[arg(long)]
    pub locked: bool,
}

/// A service and the pipeline file that deploys it.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The service (the file's `service`).
    pub service: String,

    /// The pipeline file that deploys it.
    #[arg(
        short = 'f',
        long = "file",
        default_value = "runner.toml",
        value_name = "FILE"
    )]
    pub file: PathBuf,

    #[command(flatten)]
    pub options: RunOptions,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The service.
    pub service: String,

    /// How many deploys to show, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,

    /// One JSON record per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Render SRC to DEST once, like `consul-template -template "SRC:DEST:CMD" -once`:
    /// DEST is written atomically and only when it changes; CMD runs only then.
    #[command(after_help = "Examples (the seed's upstream):\n  \
        runner --consul http://127.0.0.1:8500 template render nginx-upstreams-blue.ctmpl \\\n      \
        /etc/nginx/conf.d/books-ms.conf --exec 'nginx -s reload'\n  \
        runner template render -t 'upstreams.ctmpl:conf.d/books-ms.conf:nginx -s reload' -t 'app.ctmpl:app.env'")]
    Render {
        #[command(flatten)]
        targets: TemplateTargets,
        /// Accepted for consul-template habits: `render` always renders once
        /// (`template watch` keeps rendering).
        #[arg(long)]
        once: bool,
    },
    /// Render SRC to DEST, then again whenever the data it uses changes, like
    /// `consul-template -template "SRC:DEST:CMD"` (runs until Ctrl-C or SIGTERM).
    ///
    /// Each key, prefix and service the template reads is watched with a
    /// blocking query (Consul) or by polling the store (embedded). After a
    /// change, runner waits for quiet (--wait) and renders again; DEST is
    /// written and CMD run only when the output changed. A registry outage is
    /// retried with backoff while the last good DEST stays in place.
    #[command(after_help = "Examples (nginx follows the catalog):\n  \
        runner --consul http://127.0.0.1:8500 template watch nginx-upstreams.ctmpl \\\n      \
        /etc/nginx/conf.d/books-ms.conf --exec 'nginx -s reload' --wait 2s:10s\n  \
        runner template watch -t 'upstreams.ctmpl:conf.d/books-ms.conf:nginx -s reload' -t 'app.ctmpl:app.env'")]
    Watch {
        #[command(flatten)]
        targets: TemplateTargets,
        /// Quiescence, as consul-template's -wait: render once no change came
        /// for MIN, and at most MAX after the first change ("0s" renders at once).
        #[arg(long, default_value = "250ms:2s", value_name = "MIN[:MAX]", value_parser = parse_quiescence)]
        wait: (Duration, Duration),
        /// How long one blocking query waits for a change before asking again
        /// (Consul caps it at 10m).
        #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime::parse_duration)]
        query_wait: Duration,
    },
}

/// What to render: SRC DEST [--exec CMD], or consul-template's `-t SRC:DEST[:CMD]`, repeatable.
#[derive(Debug, Args)]
pub struct TemplateTargets {
    /// Print what would be written to stdout instead of writing DEST (and
    /// run no command), as consul-template's -dry. A DEST of `-` means the same.
    #[arg(long)]
    pub dry: bool,

    /// The template file (consul-template syntax).
    #[arg(required_unless_present = "templates")]
    pub src: Option<PathBuf>,
    /// The file to write.
    #[arg(required_unless_present = "templates")]
    pub dest: Option<PathBuf>,
    /// A shell command to run each time DEST changed (e.g. a proxy reload);
    /// it must exit 0 (`watch` retries a failure with backoff).
    #[arg(long, value_name = "CMD", requires = "src")]
    pub exec: Option<String>,
    /// A template as consul-template writes it: `SRC:DEST` or `SRC:DEST:CMD`;
    /// repeatable, and usable instead of (or with) SRC DEST.
    #[arg(short = 't', long = "template", value_name = "SRC:DEST[:CMD]", value_parser = parse_template_spec)]
    pub templates: Vec<(PathBuf, PathBuf, Option<String>)>,
    /// Time limit for each command.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exec_timeout: Duration,
    /// An environment variable templates may read with `env "NAME"`,
    /// repeatable; templates read no other (consul-template reads them all).
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
}

/// `SRC:DEST[:CMD]` (CMD may itself contain ':').
fn parse_template_spec(text: &str) -> Result<(PathBuf, PathBuf, Option<String>), BadValue> {
    let mut parts = text.splitn(3, ':');
    let src = parts.next().unwrap_or_default();
    let dest = parts.next().unwrap_or_default();
    if src.is_empty() || dest.is_empty() {
        return Err(format!(
            "\"{text}\" is not SRC:DEST[:CMD]; e.g. -t 'upstreams.ctmpl:conf.d/app.conf:nginx -s reload'"
        )
        .into());
    }
    let command = parts
        .next()
        .filter(|c| !c.trim().is_empty())
        .map(str::to_string);
    Ok((src.into(), dest.into(), command))
}

/// `MIN[:MAX]`; MAX defaults to 4×MIN, as in consul-template.
fn parse_quiescence(text: &str) -> Result<(Duration, Duration), BadValue> {
    let parse = |t: &str| {
        humantime::parse_duration(t)
            .map_err(|e| format!("\"{t}\" is not a duration ({e}); use e.g. 2s:10s"))
    };
    let (min, max) = match text.split_once(':') {
        Some((min, max)) => (parse(min)?, parse(max)?),
        None => {
            let min = parse(text)?;
            (min, min * 4)
        }
    };
    if max < min {
        return Err(format!("MAX must not be less than MIN in \"{text}\"").into());
    }
    Ok((min, max))
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds the deploy lock of SERVICE (exit 1 when nobody does).
    Status { service: String },
    /// Break the deploy lock of SERVICE (Consul; a local file lock is freed by stopping its holder).
    Release { service: String },
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    runner exec --plugin color.wasm --service books-ms --allow-kv books-ms/ --config commit=true\n  \
    runner exec --plugin integration-test.wasm --allow-http 'http://127.0.0.1:*' \\\n      \
    --config base_url=http://127.0.0.1:8080 --config check.health='GET /health 200'\n\n\
    Outputs are printed to stdout as KEY=VALUE lines (or JSON with --json).")]
pub struct ExecArgs {
    /// The stage plugin: a .wasm component built against wit/ (world `stage`),
    /// as a path, a name found as NAME.wasm in RUNNER_PLUGIN_PATH or ./plugins,
    /// or a registry reference (oci://REGISTRY/REPO:TAG or @sha256:DIGEST).
    #[arg(long, value_name = "PATH|NAME|oci://REF")]
    pub plugin: crate::plugin_ref::PluginRef,

    /// The service being deployed, passed to the stage.
    #[arg(long, default_value = "", value_name = "NAME")]
    pub service: String,

    /// A directory to find a plugin named without a path in (before
    /// RUNNER_PLUGIN_PATH and ./plugins), repeatable.
    #[arg(long, value_name = "DIR")]
    pub plugin_path: Vec<PathBuf>,

    /// The stage's name [default: the plugin's file name].
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,

    /// A stage setting, repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub config: Vec<(String, String)>,

    /// An input as if from an earlier stage (`stage.key=value`), repeatable.
    #[arg(long = "input", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub inputs: Vec<(String, String)>,

    #[command(flatten)]
    pub grants: GrantArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// Hold the deploy lock of --service for the whole stage (hooks included).
    /// On by default for stages granted Docker access; one deploy of a service at a time.
    #[arg(long)]
    pub lock: bool,

    /// How long to wait for a deploy lock someone else holds before failing.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub lock_wait: Duration,

    /// The Docker engine: `unix:///var/run/docker.sock` or `tcp://host:2375`.
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
}

/// Everything is denied unless granted here or in a grants file.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Grants (default: nothing)")]
pub struct GrantArgs {
    /// The runner file (TOML): `[grants]`, `[proxies.NAME]`, `[hooks.NAME]`;
    /// flags add to its grants.
    #[arg(long = "file", short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Every capability's flags (`--allow-kv`, `--allow-container`, ...),
    /// each defined by its capability module.
    #[command(flatten)]
    pub grants: crate::caps::GrantsSpec,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Memory the plugin's run may use: all its linear memories and tables together.
    #[arg(long, default_value = "256MiB", value_name = "SIZE", value_parser = parse_size)]
    pub memory: u64,

    /// Wall-clock time the run may take (`90s`, `10m`).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub deadline: Duration,

    /// Time any one host call (registry, HTTP) may take.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub host_call_timeout: Duration,

    /// Largest HTTP response body the plugin may receive.
    #[arg(long, default_value = "10MiB", value_name = "SIZE", value_parser = parse_size)]
    pub http_max_body: u64,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Show a plugin's world, imports, exports and the grants it can use
    /// (of a registry plugin: from its config, without pulling the component).
    #[command(after_help = "Examples:\n  \
        runner plugin inspect plugins/bluegreen.wasm\n  \
        runner plugin inspect oci://127.0.0.1:5000/team/notify:1.2")]
    Inspect {
        /// A .wasm component, or oci://REGISTRY/REPO:TAG (or @sha256:DIGEST).
        #[arg(value_name = "FILE|oci://REF")]
        plugin: String,
    },
    /// Publish a component to an OCI registry as a Wasm artifact; prints
    /// the manifest digest. The same file always gives the same digest
    /// (the creation time is SOURCE_DATE_EPOCH, else 1970).
    #[command(after_help = "Examples:\n  \
        runner plugin push target/wasm32-wasip2/release/notify.wasm oci://127.0.0.1:5000/team/notify:1.2\n  \
        digest=$(runner plugin push notify.wasm oci://registry.example.com/team/notify:1.2)\n\n\
        Credentials: runner plugin login, ~/.docker/config.json, or \
        RUNNER_REGISTRY_HOST + RUNNER_REGISTRY_USERNAME / RUNNER_REGISTRY_PASSWORD.")]
    Push {
        /// The .wasm component.
        file: PathBuf,
        /// Where: oci://REGISTRY/REPO:TAG.
        #[arg(value_name = "oci://REF")]
        reference: String,
    },
    /// Sign a registry plugin with a cosign-compatible signature (ECDSA
    /// P-256, the `sha256-DIGEST.sig` tag beside it); prints the signature
    /// manifest's digest. Signing again with the same key changes nothing.
    #[command(after_help = "Examples:\n  \
        COSIGN_PASSWORD=... runner plugin sign --key cosign.key oci://127.0.0.1:5000/team/notify:1.2\n  \
        runner plugin sign --key team.pem oci://127.0.0.1:5000/team/notify@sha256:…\n\n\
        Keys: cosign's (`cosign generate-key-pair`; the password in COSIGN_PASSWORD), or PEM from openssl:\n  \
        openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out team.pem\n  \
        openssl ec -in team.pem -pubout -out team.pub\n\n\
        Then trust the public key where plugins run: `[trust] keys = [\"team.pub\"]` in the pipeline\n\
        file, or --trust-key team.pub (RUNNER_TRUST_KEYS) with --require-signature in CI.")]
    Sign {
        /// The private key (PEM): cosign's encrypted key, PKCS#8 or SEC1.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The plugin: oci://REGISTRY/REPO:TAG (the digest it points at is
        /// what is signed) or @sha256:DIGEST.
        #[arg(value_name = "oci://REF")]
        reference: String,
    },
    /// Check a registry plugin's signatures against trusted keys (--key, or
    /// --trust-key / RUNNER_TRUST_KEYS), as `cosign verify --key` does;
    /// prints the key that signed it.
    Verify {
        /// A public key to check against, repeatable [default: --trust-key].
        #[arg(long, value_name = "FILE")]
        key: Vec<PathBuf>,
        #[arg(value_name = "oci://REF")]
        reference: String,
    },
    /// Fetch a registry plugin into the local store (verified by digest).
    Pull {
        #[arg(value_name = "oci://REF")]
        reference: String,
    },
    /// The plugins on the plugin path, in bundles and in the local store,
    /// with their digests.
    List {
        /// A directory to list plugins in (before RUNNER_PLUGIN_PATH and
        /// ./plugins), repeatable.
        #[arg(long, value_name = "DIR")]
        plugin_path: Vec<PathBuf>,
    },
    /// Store credentials for a registry in ~/.docker/config.json (as
    /// `docker login` does), after checking them against the registry.
    #[command(after_help = "Example:\n  \
        echo \"$TOKEN\" | runner plugin login registry.example.com --username ci --password-stdin")]
    Login {
        /// The registry, HOST[:PORT].
        registry: String,
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from stdin (it never appears in the process list).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Pin every registry plugin of a pipeline (stages and hooks) in
    /// runner.lock beside it: what is locked stays, what is not is resolved.
    Lock {
        #[arg(default_value = "runner.toml", value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        plugin_path: Vec<PathBuf>,
    },
    /// Resolve the tags of a pipeline's registry plugins again and rewrite
    /// runner.lock, showing what changed, and any capability a new
    /// version imports that the locked one did not.
    #[command(after_help = "Examples:\n  \
        runner plugin update                # every plugin of ./runner.toml\n  \
        runner plugin update notify         # only oci://…/notify:… references\n  \
        runner plugin update --locked       # refuse an update that imports a new capability")]
    Update {
        /// A reference as written, or its repository's last part (`notify`).
        name: Option<String>,
        #[arg(long, default_value = "runner.toml", value_name = "FILE")]
        file: PathBuf,
        #[arg(long, value_name = "DIR")]
        plugin_path: Vec<PathBuf>,
        /// Refuse (and write nothing) when a new version imports a
        /// capability its locked version did not.
        #[arg(long)]
        locked: bool,
    },
    /// Pull plugins and precompile them for this runner build into a
    /// directory, for a CI image: put it on RUNNER_PLUGIN_PATH and runs
    /// need no registry and no compile.
    #[command(after_help = "Examples:\n  \
        runner plugin bundle --lock runner.lock --out bundle/\n  \
        runner plugin bundle --out bundle/ oci://127.0.0.1:5000/team/notify@sha256:…\n\n\
        See examples/ci-image/ for a Dockerfile.")]
    Bundle {
        /// The directory to write (created; existing bundles are updated).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Bundle every plugin runner.lock pins.
        #[arg(long, value_name = "FILE")]
        lock: Option<PathBuf>,
        /// References to bundle (besides --lock).
        #[arg(value_name = "oci://REF")]
        references: Vec<String>,
    },
    /// Start a new stage plugin: a project that builds and runs as it is,
    /// with a test, the WIT contract and a one-stage pipeline file.
    #[command(after_help = "Examples:\n  \
        runner plugin new notify-ops                 # Rust, in ./notify-ops\n  \
        runner plugin new smoke-test --lang python\n\n\
        Then follow the README.md in the new directory: test, build, run.")]
    New {
        /// The plugin's name: lowercase letters, digits and '-'.
        name: String,
        /// The language of the plugin.
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::scaffold::Lang,
        /// Where to create it [default: ./NAME].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (exit 1 if it does not exist).
    Get {
        key: String,
        /// Also print the create and modify indexes.
        #[arg(long)]
        detailed: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        /// Write only if the key's modify index is INDEX (0: only if absent).
        #[arg(long, value_name = "INDEX")]
        cas: Option<u64>,
    },
    /// List keys under a prefix, as KEY<TAB>VALUE lines.
    List {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Delete a key.
    Delete { key: String },
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List services and their instances.
    List {
        /// Only this service.
        service: Option<String>,
    },
    /// Put an instance of SERVICE at ADDRESS:PORT into the catalog, as
    /// `consul services register` does (re-registering an ID replaces it).
    #[command(after_help = "Examples:\n  \
        runner catalog register books-ms 127.0.0.1:8081 --id books-ms-1 --tag blue\n  \
        runner catalog register books-ms 127.0.0.1:8082 --id books-ms-2 --tag green --critical\n  \
        runner catalog register db 127.0.0.1:5432 --node db-host --meta role=primary --status warning\n  \
        runner catalog deregister books-ms books-ms-2")]
    Register {
        /// The service name (`[a-zA-Z0-9][a-zA-Z0-9._-]*`).
        service: String,
        /// Where the instance answers: HOST:PORT (`[::1]:8080` for IPv6).
        #[arg(value_name = "ADDRESS:PORT", value_parser = parse_address)]
        address: (String, u16),
        /// The instance ID [default: the service name, as Consul's].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// A tag, repeatable.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Its health: passing, warning, critical or maintenance (templates'
        /// plain `service "name"` lists only passing instances).
        #[arg(long, value_name = "STATUS", value_parser = parse_health, default_value = "passing")]
        status: crate::registry::Health,
        /// Shorthand for `--status critical`.
        #[arg(long, conflicts_with = "status")]
        critical: bool,
        /// The node it runs on (templates' `.Node`) [default: this machine's host name].
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
        /// The node's address (templates' `.NodeAddress`) [default: 127.0.0.1].
        #[arg(long, value_name = "ADDRESS")]
        node_address: Option<String>,
        /// Service metadata KEY=VALUE (templates' `.ServiceMeta`), repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
    },
    /// Remove instance ID of SERVICE from the catalog (exit 1 if it is not there).
    Deregister { service: String, id: String },
}

fn parse_health(text: &str) -> Result<crate::registry::Health, BadValue> {
    crate::registry::Health::parse(text).ok_or_else(|| {
        BadValue(format!(
            "\"{text}\" is not a status; use passing, warning, critical or maintenance"
        ))
    })
}

/// `KEY=VALUE` (the value may be empty or hold `=`).
fn parse_meta(text: &str) -> Result<(String, String), BadValue> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(BadValue(format!(
            "\"{text}\" is not KEY=VALUE, e.g. version=2.1"
        ))),
    }
}

/// `HOST:PORT`, `[V6]:PORT`.
fn parse_address(text: &str) -> Result<(String, u16), BadValue> {
    let bad = || BadValue(format!("\"{text}\" is not HOST:PORT, e.g. 127.0.0.1:8080"));
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains(char::is_whitespace) || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// A flag's value that does not parse; clap prints it after the flag.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(String);

impl From<String> for BadValue {
    fn from(message: String) -> Self {
        Self(message)
    }
}

/// consul-template's single-dash long flags, as its users type them after
/// `runner template`: `-template`, `-once`, `-dry`, `-wait`, `-consul-addr`
/// (with a value after `=` or as the next argument). Anywhere else, and for
/// anything else, the arguments are left as they are: `-t` stays clap's.
pub fn consul_template_habits(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    const LONG: &[(&str, &str)] = &[
        ("-template", "--template"),
        ("-once", "--once"),
        ("-dry", "--dry"),
        ("-wait", "--wait"),
        ("-consul-addr", "--consul"),
        ("-exec-timeout", "--exec-timeout"),
    ];
    // Only `runner [GLOBAL FLAGS] template …`, and never after `--`: a
    // value like `runner kv put k -- -dry` stays as typed.
    const GLOBAL_WITH_VALUE: &[&str] =
        &["--state-dir", "--consul", "--consul-token", "--cache-dir"];
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let mut position = 1;
    while let Some(arg) = args.get(position).and_then(|a| a.to_str()) {
        if !arg.starts_with('-') {
            break;
        }
        position += if GLOBAL_WITH_VALUE.contains(&arg) {
            2
        } else {
            1
        };
    }
    if args.get(position).and_then(|a| a.to_str()) != Some("template") {
        return args;
    }
    for arg in args.iter_mut().skip(position + 1) {
        let Some(text) = arg.to_str() else { continue };
        if text == "--" {
            break;
        }
        let (flag, value) = match text.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (text, None),
        };
        if let Some((_, long)) = LONG.iter().find(|(single, _)| *single == flag) {
            *arg = match value {
                Some(value) => format!("{long}={value}").into(),
                None => (*long).into(),
            };
        }
    }
    args
}

fn parse_pair(s: &str) -> Result<(String, String), BadValue> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got \"{s}\"").into()),
    }
}

fn parse_size(s: &str) -> Result<u64, BadValue> {
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("\"{s}\" is not a size like 256MiB: {e}").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn consul_template_flags_are_read_as_its_users_type_them() {
        let args = |line: &str| -> Vec<String> {
            consul_template_habits(line.split(' ').map(std::ffi::OsString::from))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            args(
                "runner template render -template in:out:cmd -once -dry -consul-addr=127.0.0.1:8500"
            ),
            [
                "runner",
                "template",
                "render",
                "--template",
                "in:out:cmd",
                "--once",
                "--dry",
                "--consul=127.0.0.1:8500"
            ]
        );
        // Before `template`, and clap's own short flags, are left alone.
        assert_eq!(
            args("runner -v template watch -t a:b"),
            ["runner", "-v", "template", "watch", "-t", "a:b"]
        );
        assert_eq!(
            args("runner exec -template"),
            ["runner", "exec", "-template"]
        );
        // Only the `template` subcommand, and nothing after `--`.
        assert_eq!(
            args("runner kv put template -- -dry"),
            ["runner", "kv", "put", "template", "--", "-dry"]
        );
        assert_eq!(
            args("runner --state-dir template template render -- -dry"),
            [
                "runner",
                "--state-dir",
                "template",
                "template",
                "render",
                "--",
                "-dry"
            ]
        );
        assert_eq!(
            args("runner --state-dir s template render -once"),
            ["runner", "--state-dir", "s", "template", "render", "--once"]
        );
        let cli = Cli::parse_from(consul_template_habits(
            "runner template render -template in.ctmpl:out.conf:true -dry"
                .split(' ')
                .map(std::ffi::OsString::from),
        ));
        assert!(matches!(
            cli.command,
            Command::Template(TemplateCommand::Render { .. })
        ));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_pairs_parse() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 * 1024 * 1024);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_pair("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_pair("=x").is_err());
    }
}
