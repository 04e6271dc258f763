//! One module per capability a plugin can be granted.
//!
//! Every capability is one unit implementing [`Capability`] (Spin's factors,
//! wasmtime-wasi's per-interface contexts): its grant as the operator writes it
//! (one struct that is both its CLI flags and its TOML keys), the validation
//! of that into its grant type, the per-run state it prepares from the grants,
//! the shared host and the stage's limits, its linking, the WIT interfaces it
//! serves and the hint `inspect` and `validate` print. The list in
//! [`capabilities!`] below is the only place that names them all: the grant
//! spec, the validated grants, the per-run state, the linker and the import
//! table are generated from it. The runtime only sees [`Capabilities`] and
//! [`add_to_linker`].

/// `Capability::add_to_linker` for a capability serving the WIT interfaces
/// named (modules of the generated bindings in scope where it is used).
macro_rules! link_interfaces {
    ($($interface:ident),+) => {
        fn add_to_linker<T: Send + 'static>(
            linker: &mut wasmtime::component::Linker<T>,
            get: fn(&mut T) -> &mut Self,
        ) -> wasmtime::Result<()> {
            $( $interface::add_to_linker::<T, wasmtime::component::HasSelf<Self>>(linker, get)?; )+
            Ok(())
        }
    };
}

/// A grant spec that is one repeatable flag (`--allow-kv PREFIX`), the same
/// key in TOML (`kv = [...]`); the doc comment is the flag's help.
macro_rules! list_grant_spec {
    ($(#[$doc:meta])* $spec:ident { $key:ident: $flag:literal, $value:literal }) => {
        #[derive(clap::Args, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
        pub struct $spec {
            $(#[$doc])*
            #[arg(long = $flag, value_name = $value)]
            #[serde(default)]
            pub $key: Vec<String>,
        }

        impl $crate::caps::GrantSpec for $spec {
            fn merge(&mut self, other: Self) {
                self.$key.extend(other.$key);
            }
        }
    };
}

pub mod catalog;
pub mod dirs;
pub mod docker;
mod globs;
pub mod hooks;
pub mod http;
pub mod journal;
pub mod kv;
pub mod log;
pub mod proxy;
pub mod template;

use crate::bindings::PluginError;
use crate::grants::{GrantError, InvalidGrant};
use crate::registry::{Registry, RegistryError};
use crate::runtime::Limits;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

/// What every capability needs from the host, shared across runs.
#[derive(Clone)]
pub struct HostServices {
    pub registry: Arc<dyn Registry>,
    /// The Docker engine (connected on first use).
    pub docker: docker::DockerEngine,
    /// Runs `[hooks.*]`; `None` inside a hook (hooks do not nest).
    pub hooks: Option<Arc<dyn hooks::HookRunner>>,
    /// The service whose deploy lock this execution holds: its stage may
    /// write the service's journal. `None` for hooks and unlocked runs.
    pub journal_service: Option<String>,
}

/// What a capability builds one run's state from.
pub struct RunContext<'a> {
    /// The plugin's name, for log lines.
    pub plugin: &'a str,
    /// Every validated grant of the stage (a capability may read another's:
    /// templates read the kv and catalog grants for their data).
    pub grants: &'a Grants,
    pub host: &'a HostServices,
    /// The stage's limits: host-call timeout, HTTP body size.
    pub limits: &'a Limits,
}

/// A capability's grant as the operator writes it: clap flags for `runner
/// exec` and keys of a `[grants]` table, in one struct.
pub trait GrantSpec:
    clap::Args + serde::de::DeserializeOwned + Default + Clone + std::fmt::Debug + PartialEq
{
    /// Add `other`'s grants to these (flags add to a file's grants).
    fn merge(&mut self, other: Self);
    /// Make relative paths relative to `base` (a runner file's directory).
    fn rebase(&mut self, _base: &Path) {}
}

/// One capability: grant, validation, per-run state, linking and hints.
pub trait Capability: Sized + Send + 'static {
    /// The WIT interfaces it serves (`runner:plugin/kv`); an entry ending
    /// in `/` covers a family (`wasi:filesystem/`).
    const INTERFACES: &'static [&'static str];
    /// How the operator grants it on the command line (`plugin inspect`).
    const FLAG_HINT: &'static str;
    /// How a pipeline stage grants it (`validate`'s fix for an import the
    /// stage does not cover); empty when nothing needs granting.
    const TOML_HINT: &'static str = "";
    /// The WIT files it adds to the contract (`plugin new` copies them).
    const WIT: &'static [(&'static str, &'static str)] = &[];
    /// The grant as written.
    type Spec: GrantSpec;
    /// The validated grant.
    type Grant: Clone + std::fmt::Debug + Default + Send + Sync;

    /// Parse and check the written grant, once, before anything runs.
    fn validate(spec: &Self::Spec, cx: &mut ValidateContext<'_>)
    -> Result<Self::Grant, GrantError>;
    /// Whether `grants` let a plugin use this capability at all.
    fn granted(grants: &Grants) -> bool;
    /// This run's state.
    fn prepare(cx: &RunContext<'_>) -> Self;
    /// Link its WIT interfaces; `get` projects it out of the store's data.
    fn add_to_linker<T: Send + 'static>(
        linker: &mut Linker<T>,
        get: fn(&mut T) -> &mut Self,
    ) -> wasmtime::Result<()>;
    /// Configure the run's WASI context (only the directory grant does).
    fn configure_wasi(
        &self,
        _wasi: &mut wasmtime_wasi::WasiCtxBuilder,
    ) -> Result<(), dirs::DirError> {
        Ok(())
    }
}

/// The grant of a capability that needs none (log, journal).
#[derive(clap::Args, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[group(skip)] // flattened once per such capability: no argument group
pub struct NoGrant {}

impl GrantSpec for NoGrant {
    fn merge(&mut self, _other: Self) {}
}

/// The list: generates [`GrantsSpec`], [`Grants`], [`Capabilities`],
/// [`add_to_linker`] and [`IMPORTS`]. A field name is the capability's name
/// in all of them.
macro_rules! capabilities {
    ($($field:ident: $cap:ty,)+) => {
        /// Grants as written by the operator (flags or a `[grants]` table),
        /// before validation. Everything is denied unless granted.
        #[derive(clap::Args, Debug, Clone, Default, PartialEq)]
        pub struct GrantsSpec {
            $(
                #[command(flatten)]
                pub $field: <$cap as Capability>::Spec,
            )+
        }

        /// A `[grants]` table: each key goes to the capability that owns it;
        /// an unknown key is refused at that key (its line in the file),
        /// naming every known one.
        impl<'de> serde::Deserialize<'de> for GrantsSpec {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Table;
                impl<'de> serde::de::Visitor<'de> for Table {
                    type Value = GrantsSpec;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a table of grants")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<GrantsSpec, A::Error> {
                        let mut spec = GrantsSpec::default();
                        while let Some(key) = map.next_key_seed(GrantKey(grant_keys()))? {
                            $(
                                if spec_keys::<<$cap as Capability>::Spec>().contains(&key.as_str()) {
                                    spec.$field.merge(map.next_value_seed(OneKey(key, std::marker::PhantomData))?);
                                    continue;
                                }
                            )+
                        }
                        Ok(spec)
                    }
                }
                deserializer.deserialize_map(Table)
            }
        }

        /// Every key of a `[grants]` table, in the list's order.
        fn grant_keys() -> &'static [&'static str] {
            static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
            KEYS.get_or_init(|| {
                let mut keys = Vec::new();
                $( keys.extend_from_slice(spec_keys::<<$cap as Capability>::Spec>()); )+
                keys
            })
        }

        impl GrantsSpec {
            /// Add `other`'s grants to these (flags add to a file's grants).
            pub fn merge(&mut self, other: GrantsSpec) {
                $( self.$field.merge(other.$field); )+
            }

            /// Make relative paths relative to `base` (a runner file's directory).
            pub fn rebase(&mut self, base: &Path) {
                $( self.$field.rebase(base); )+
            }

            /// Validate every grant. Granted proxies and hooks must be defined
            /// (`proxies` and `hooks` hold the runner file's definitions).
            pub fn validate_with(
                &self,
                proxies: &[proxy::ProxyConfig],
                hooks: &[String],
            ) -> Result<Grants, GrantError> {
                let mut cx = ValidateContext::new(proxies, hooks);
                $( let $field = <$cap as Capability>::validate(&self.$field, &mut cx)?; )+
                Ok(Grants { $($field,)+ missing_dirs: cx.into_missing_dirs() })
            }
        }

        /// Validated grants, ready to build one run's capabilities.
        #[derive(Debug, Clone, Default)]
        pub struct Grants {
            $( pub $field: <$cap as Capability>::Grant, )+
            /// Granted directories that do not exist yet (a later step creates
            /// them): a warning when validating, an error when a run needs them.
            pub missing_dirs: Vec<PathBuf>,
        }

        /// The per-run state of every capability, built from one plugin's grants.
        pub struct Capabilities {
            $( pub $field: $cap, )+
        }

        impl Capabilities {
            pub fn prepare(cx: &RunContext<'_>) -> Self {
                Self { $( $field: <$cap as Capability>::prepare(cx), )+ }
            }

            /// Let each capability configure the run's WASI context.
            pub fn configure_wasi(
                &self,
                wasi: &mut wasmtime_wasi::WasiCtxBuilder,
            ) -> Result<(), dirs::DirError> {
                $( self.$field.configure_wasi(wasi)?; )+
                Ok(())
            }
        }

        /// Link every capability interface of the `stage` world.
        pub fn add_to_linker<T: CapabilitiesView + 'static>(
            linker: &mut Linker<T>,
        ) -> wasmtime::Result<()> {
            $( <$cap as Capability>::add_to_linker(linker, |t: &mut T| &mut t.capabilities().$field)?; )+
            Ok(())
        }

        /// What each capability serves and how it is granted.
        pub static IMPORTS: &[ImportGrant] = &[
            $(
                ImportGrant {
                    capability: stringify!($field),
                    interfaces: <$cap as Capability>::INTERFACES,
                    flag_hint: <$cap as Capability>::FLAG_HINT,
                    toml_hint: <$cap as Capability>::TOML_HINT,
                    granted: <$cap as Capability>::granted,
                    wit: <$cap as Capability>::WIT,
                },
            )+
        ];
    };
}

capabilities! {
    log: log::LogCap,
    kv: kv::KvCap,
    catalog: catalog::CatalogCap,
    http: http::HttpCap,
    dirs: dirs::DirsCap,
    template: template::TemplateCap,
    docker: docker::DockerCap,
    proxy: proxy::ProxyCap,
    hooks: hooks::HooksCap,
    journal: journal::JournalCap,
}

/// The TOML keys of a capability's spec (serde's own field list).
fn spec_keys<S: GrantSpec>() -> &'static [&'static str] {
    serde_aux::serde_introspection::serde_introspect::<S>()
}

/// A key of a `[grants]` table, refused while it is read (so the error
/// points at it) unless one of `.0` (every known key).
struct GrantKey(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for GrantKey {
    type Value = String;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let key = <String as serde::Deserialize>::deserialize(d)?;
        if self.0.contains(&key.as_str()) {
            Ok(key)
        } else {
            Err(serde::de::Error::unknown_field(&key, self.0))
        }
    }
}

/// The value of `key` as the spec `S` that owns it, checked while it is read
/// (so an error points at the value).
struct OneKey<S>(String, std::marker::PhantomData<S>);

impl<'de, S: GrantSpec> serde::de::DeserializeSeed<'de> for OneKey<S> {
    type Value = S;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<S, D::Error> {
        let value = <toml::Value as serde::Deserialize>::deserialize(d)?;
        let mut table = toml::Table::new();
        table.insert(self.0, value);
        S::deserialize(toml::Value::Table(table)).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

/// One row of [`IMPORTS`].
pub struct ImportGrant {
    pub capability: &'static str,
    pub interfaces: &'static [&'static str],
    pub flag_hint: &'static str,
    pub toml_hint: &'static str,
    pub granted: fn(&Grants) -> bool,
    pub wit: &'static [(&'static str, &'static str)],
}

impl ImportGrant {
    fn serves(&self, interface: &str) -> bool {
        self.interfaces.iter().any(|i| match i.strip_suffix('/') {
            Some(family) => {
                interface.starts_with(family) && interface[family.len()..].starts_with('/')
            }
            None => interface == *i,
        })
    }
}

/// WASI interfaces every run gets (or never gets), granted by no capability.
const WASI_POLICY: &[(&str, &str)] = &[
    ("wasi:sockets/", "never granted: use runner:plugin/http"),
    (
        "wasi:cli/environment",
        "always empty (no environment, no arguments)",
    ),
    ("wasi:cli/stdout", "captured into the log"),
    ("wasi:cli/stderr", "captured into the log"),
    ("wasi:cli/", "always available"),
    ("wasi:io/", "always available"),
    ("wasi:clocks/", "always available"),
    ("wasi:random/", "always available"),
];

/// How runner treats an imported interface (`name@version`).
pub enum ImportUse {
    /// Served by a capability.
    Capability(&'static ImportGrant),
    /// A WASI interface with a fixed policy (the text says which).
    Wasi(&'static str),
}

/// What serves `import`; `None` when runner does not provide it.
pub fn import_use(import: &str) -> Option<ImportUse> {
    let interface = import.split('@').next().unwrap_or(import);
    if let Some(cap) = IMPORTS.iter().find(|c| c.serves(interface)) {
        return Some(ImportUse::Capability(cap));
    }
    WASI_POLICY
        .iter()
        .find(|(prefix, _)| match prefix.strip_suffix('/') {
            Some(family) => interface.starts_with(*prefix) || interface == family,
            None => interface == *prefix,
        })
        .map(|(_, policy)| ImportUse::Wasi(policy))
}

/// What validation needs beyond one capability's own grant: the runner file's
/// definitions, and the granted directories found missing along the way.
pub struct ValidateContext<'a> {
    /// The runner file's `[proxies.NAME]`.
    pub proxies: &'a [proxy::ProxyConfig],
    /// The runner file's `[hooks.NAME]` names.
    pub hooks: &'a [String],
    missing_dirs: Vec<PathBuf>,
}

impl<'a> ValidateContext<'a> {
    pub fn new(proxies: &'a [proxy::ProxyConfig], hooks: &'a [String]) -> Self {
        Self {
            proxies,
            hooks,
            missing_dirs: Vec::new(),
        }
    }

    /// A granted directory; one that does not exist yet is allowed (a later
    /// step may create it) and reported in `missing_dirs`.
    pub fn existing_dir(&mut self, path: &Path) -> Result<template::GrantedDir, InvalidGrant> {
        if path.is_dir() {
            return template::GrantedDir::new(path).map_err(|e| e.to_string().into());
        }
        if path.exists() {
            return Err(format!("{} is not a directory", path.display()).into());
        }
        self.missing_dirs.push(path.to_path_buf());
        template::GrantedDir::not_yet_created(path).map_err(|e| e.to_string().into())
    }

    pub fn into_missing_dirs(self) -> Vec<PathBuf> {
        self.missing_dirs
    }
}

/// Access to the capabilities inside a store's data.
pub trait CapabilitiesView: Send {
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// The `denied` error every capability returns: names the capability, what
/// was refused, and the grant that would allow it.
pub(crate) fn denied(
    capability: &str,
    what: impl std::fmt::Display,
    grant: impl std::fmt::Display,
) -> PluginError {
    PluginError::Denied(format!("{capability}: {what}; grant it with {grant}"))
}

pub(crate) fn registry_error(capability: &str, e: RegistryError) -> PluginError {
    match e {
        RegistryError::Unavailable(m) => PluginError::Unavailable(format!("{capability}: {m}")),
        RegistryError::Backend(m) | RegistryError::Refused(m) => {
            PluginError::Failed(format!("{capability}: {m}"))
        }
        RegistryError::Denied(m) => PluginError::Denied(format!("{capability}: {m}")),
        RegistryError::Conflict(m) => PluginError::Conflict(format!("{capability}: {m}")),
    }
}

/// Bound an awaited host call by the host-call timeout: epoch deadlines only
/// fire inside guest code, so a call stuck on I/O needs its own limit.
pub(crate) async fn bounded<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(PluginError::Timeout(format!(
            "{what} did not finish within the host-call timeout ({}); raise it with --host-call-timeout (in a pipeline, the stage's limits.host_call_timeout)",
            humantime::format_duration(limit)
        ))),
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runner_interface_is_served_by_one_capability() {
        // Every interface the contract defines: a new .wit without its
        // capability in the list fails here.
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut interfaces = Vec::new();
        for file in std::fs::read_dir(wit).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            interfaces.extend(text.lines().filter_map(|l| {
                let name = l.trim().strip_prefix("interface ")?;
                Some(name.trim_end_matches('{').trim().to_string())
            }));
        }
        assert!(interfaces.len() >= 10, "{interfaces:?}");
        for iface in interfaces {
            let import = format!("runner:plugin/{iface}@0.1.0");
            assert!(
                matches!(import_use(&import), Some(ImportUse::Capability(_))),
                "{iface}"
            );
            let serving = IMPORTS
                .iter()
                .filter(|c| c.serves(&format!("runner:plugin/{iface}")));
            assert_eq!(serving.count(), 1, "{iface}");
        }
        assert!(matches!(
            import_use("wasi:filesystem/types@0.2.3"),
            Some(ImportUse::Capability(c)) if c.capability == "dirs"
        ));
        assert!(matches!(
            import_use("wasi:sockets/tcp@0.2.3"),
            Some(ImportUse::Wasi("never granted: use runner:plugin/http"))
        ));
        assert!(import_use("acme:thing/x").is_none());
        assert!(import_use("wasi:filesystemx/types").is_none());
    }

    #[test]
    fn grants_spec_reads_flags_and_toml_into_the_same_struct() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            grants: GrantsSpec,
        }
        let flags = Flags::parse_from([
            "x",
            "--allow-kv",
            "books-ms/",
            "--allow-container",
            "books-ms-*",
            "--allow-build",
        ]);
        let toml: GrantsSpec =
            toml::from_str("kv = [\"books-ms/\"]\ncontainers = [\"books-ms-*\"]\nbuild = true")
                .unwrap();
        assert_eq!(flags.grants, toml);
        let err = toml::from_str::<GrantsSpec>("kv = []\nkvv = []").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("unknown field `kvv`, expected one of `kv`, `services`"),
            "{message}"
        );
        assert_eq!(
            err.span().map(|s| s.start),
            Some(8),
            "the error points at the key"
        );
    }

    #[test]
    fn toml_grants_section_parses_and_merges_with_flags() {
        let mut spec: GrantsSpec = toml::from_str(
            r#"
            kv = ["books-ms/"]
            services = ["books-ms-*"]
            http = ["http://127.0.0.1:*"]
            "#,
        )
        .unwrap();
        spec.merge(GrantsSpec {
            kv: kv::KvSpec {
                kv: vec!["other/".into()],
            },
            ..Default::default()
        });
        assert_eq!(spec.kv.kv, ["books-ms/", "other/"]);
        let g = spec.validate_with(&[], &[]).unwrap();
        assert!(g.kv.allows_key("other/x"));
        assert!(g.catalog.allows("books-ms-blue"));
    }

    #[test]
    fn invalid_grants_name_the_flag() {
        let spec = GrantsSpec {
            http: http::HttpSpec {
                http: vec!["localhost".into()],
            },
            ..Default::default()
        };
        let err = spec.validate_with(&[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("--allow-http") && err.contains("scheme://host:port"),
            "{err}"
        );
    }

    /// Templates read only the environment variables granted by name.
    #[test]
    fn template_env_grants_are_names() {
        let spec: GrantsSpec = toml::from_str("template_env = [\"REGION\", \"_X1\"]").unwrap();
        let grants = spec.validate_with(&[], &[]).unwrap();
        assert_eq!(grants.template.env, ["REGION", "_X1"]);
        for bad in ["1X", "A-B", "", "A B", "PATH=/x"] {
            let spec = GrantsSpec {
                template: template::TemplateSpec {
                    template_env: vec![bad.into()],
                    ..Default::default()
                },
                ..Default::default()
            };
            let err = spec.validate_with(&[], &[]).unwrap_err().to_string();
            assert!(err.contains("--allow-template-env"), "{bad}: {err}");
        }
    }
}
