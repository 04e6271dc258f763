//! The Rust SDK for runner stage plugins.
//!
//! It runs wit-bindgen once over `wit/` and re-exports the bindings, so a
//! plugin is just:
//!
//! ```ignore
//! use runner_sdk::{Context, Description, Error, Guest, Outcome, SettingKind};
//!
//! struct Hello;
//! impl Guest for Hello {
//!     fn run(ctx: Context) -> Result<Outcome, Error> {
//!         let who = runner_sdk::config(&ctx).get_or("who", "world");
//!         Ok(runner_sdk::outcome(format!("hello {who}")).with_output("greeting", "hello"))
//!     }
//!     // What `runner validate` checks a pipeline against.
//!     fn describe() -> Description {
//!         runner_sdk::description("Greets someone")
//!             .setting(runner_sdk::setting("who", SettingKind::Text, "who to greet").default("world"))
//!             .output("greeting", "the greeting")
//!     }
//! }
//! runner_sdk::export!(Hello);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` is a
//! component `runner exec --plugin` runs.

/// The generated bindings; everything useful is re-exported at the crate root.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        world: "described-stage",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "runner_sdk::bindings",
    });
}

// Every interface of the contract, under its WIT name (`runner_sdk::kv`).
pub use bindings::runner::plugin::types::{Description, OutputSpec, Setting, SettingKind};
pub use bindings::runner::plugin::*;
pub use bindings::{Context, Error, Guest, Outcome, export};

/// A description with `summary` and nothing declared yet.
pub fn description(summary: impl Into<String>) -> Description {
    Description {
        summary: summary.into(),
        settings: Vec::new(),
        outputs: Vec::new(),
    }
}

/// An optional setting without a default; see [`Setting::required`] and
/// [`Setting::default`]. A name ending in `*` declares a family (`env.*`).
pub fn setting(name: impl Into<String>, kind: SettingKind, doc: impl Into<String>) -> Setting {
    Setting {
        name: name.into(),
        kind,
        default: None,
        required: false,
        doc: doc.into(),
    }
}

impl Setting {
    /// A pipeline must set it.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// What the stage uses when it is not set.
    pub fn default(mut self, value: impl Into<String>) -> Self {
        self.default = Some(value.into());
        self
    }
}

impl Description {
    pub fn setting(mut self, setting: Setting) -> Self {
        self.settings.push(setting);
        self
    }

    /// An output later stages read as `${STAGE.NAME}`.
    pub fn output(mut self, name: impl Into<String>, doc: impl Into<String>) -> Self {
        self.outputs.push(OutputSpec {
            name: name.into(),
            doc: doc.into(),
        });
        self
    }
}

use std::time::Duration;

/// A successful outcome with a message and no outputs.
pub fn outcome(message: impl Into<String>) -> Outcome {
    Outcome {
        outputs: Vec::new(),
        message: message.into(),
    }
}

impl Outcome {
    /// Add an output later stages receive as `<stage>.<key>`.
    pub fn with_output(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.outputs.push((key.into(), value.into()));
        self
    }
}

/// A readable one-line form of an [`Error`]: `denied: kv: ...`.
pub fn describe(error: &Error) -> String {
    let (kind, m) = match error {
        Error::Denied(m) => ("denied", m),
        Error::NotFound(m) => ("not found", m),
        Error::Conflict(m) => ("conflict", m),
        Error::InvalidConfig(m) => ("invalid config", m),
        Error::Failed(m) => ("failed", m),
        Error::Timeout(m) => ("timeout", m),
        Error::Unavailable(m) => ("unavailable", m),
    };
    format!("{kind}: {m}")
}

/// Typed access to a stage's `--config KEY=VALUE` settings.
pub struct Config<'a> {
    pairs: &'a [(String, String)],
}

/// The config of `ctx`.
pub fn config(ctx: &Context) -> Config<'_> {
    Config { pairs: &ctx.config }
}

impl<'a> Config<'a> {
    /// The value of `key` (the last one given wins).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn get_or(&self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an `invalid-config` error naming it.
    pub fn require(&self, key: &str) -> Result<&'a str, Error> {
        self.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::InvalidConfig(format!("missing setting `{key}`; pass --config {key}=..."))
        })
    }

    /// `true`/`false`/`1`/`0`/`yes`/`no`; absent is `default`.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.get(key) {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(Error::InvalidConfig(format!(
                "setting `{key}` must be true or false, got \"{v}\""
            ))),
        }
    }

    /// A number; absent is `default`.
    pub fn u64(&self, key: &str, default: u64) -> Result<u64, Error> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                Error::InvalidConfig(format!(
                    "setting `{key}` must be a whole number, got \"{v}\""
                ))
            }),
        }
    }

    /// A duration written as `500ms`, `10s`, `2m` or plain milliseconds.
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, Error> {
        let Some(v) = self.get(key) else {
            return Ok(default);
        };
        parse_duration(v).ok_or_else(|| {
            Error::InvalidConfig(format!(
                "setting `{key}` must be a duration like 500ms, 10s or 2m, got \"{v}\""
            ))
        })
    }

    /// Every `(rest, value)` for keys `prefix.rest`, in the order given.
    pub fn with_prefix(&self, prefix: &str) -> Vec<(&'a str, &'a str)> {
        let dotted = format!("{prefix}.");
        self.pairs
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(dotted.as_str())
                    .map(|rest| (rest, v.as_str()))
            })
            .collect()
    }
}

fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return None,
    })
}

/// Log helpers: `runner_sdk::info("...")`.
pub fn info(message: &str) {
    log::write(log::Level::Info, message);
}

pub fn warn(message: &str) {
    log::write(log::Level::Warn, message);
}

pub fn debug(message: &str) {
    log::write(log::Level::Debug, message);
}
