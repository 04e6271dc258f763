//! A runner file (grants, targets, proxies) or pipeline (stages, hooks)
//! built up in code and written as TOML, so a test names what it needs
//! instead of spelling out the text. The layout is fixed (a test may assert
//! a line number): `service`, then `[targets]`, `[grants]`, each proxy,
//! each stage (`name`, `plugin`, `config`, `grants`, then its other keys in
//! the order set), each hook; one blank line between tables.
//!
//! ```ignore
//! RunnerFile::new()
//!     .service("svc")
//!     .stage(Stage::new("one", "sandbox-probe").config("mode", "noop").grant("kv", ["svc/"]))
//!     .write(env.path());
//! ```

use super::hostile::toml_str;
use std::path::{Path, PathBuf};

/// A value as TOML text: strings quoted, string lists as arrays.
pub trait TomlValue {
    fn toml(&self) -> String;
}

impl TomlValue for &str {
    fn toml(&self) -> String {
        toml_str(self)
    }
}

impl TomlValue for String {
    fn toml(&self) -> String {
        toml_str(self)
    }
}

impl TomlValue for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl<const N: usize> TomlValue for [&str; N] {
    fn toml(&self) -> String {
        self.as_slice().toml()
    }
}

impl TomlValue for &[&str] {
    fn toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| toml_str(s)).collect();
        format!("[{}]", items.join(", "))
    }
}

impl TomlValue for Vec<String> {
    fn toml(&self) -> String {
        let items: Vec<String> = self.iter().map(|s| toml_str(s)).collect();
        format!("[{}]", items.join(", "))
    }
}

/// A key as TOML text: bare when it can be, quoted otherwise (`"label.x"`).
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { k.to_string() } else { toml_str(k) }
}

/// `KEY = VALUE` pairs, in order.
#[derive(Clone, Debug, Default)]
pub struct Table {
    entries: Vec<(String, String)>,
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set `key` to `value` (later sets of the same key are kept too: TOML
    /// rejects the file, which is what a test of that wants).
    pub fn set(mut self, k: &str, value: impl TomlValue) -> Self {
        self.entries.push((key(k), value.toml()));
        self
    }

    /// Set `key` to TOML text as it is (an inline table, a number).
    pub fn set_raw(mut self, k: &str, toml: &str) -> Self {
        self.entries.push((key(k), toml.to_string()));
        self
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `{ k = v, ... }`.
    fn inline(&self) -> String {
        let pairs: Vec<String> = self
            .entries
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }

    /// One `k = v` line each.
    fn lines(&self) -> String {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect()
    }
}

/// A pipeline stage (`[[stages]]`) or a hook (`[hooks.NAME]`, no name).
#[derive(Clone, Debug)]
pub struct Stage {
    name: Option<String>,
    plugin: String,
    config: Table,
    grants: Table,
    other: Table,
}

impl Stage {
    /// A stage running `plugin` (a name on the plugin path or a path).
    pub fn new(name: &str, plugin: &str) -> Self {
        Self {
            name: Some(name.to_string()),
            ..Self::hook(plugin)
        }
    }

    /// A hook running `plugin`.
    pub fn hook(plugin: &str) -> Self {
        Self {
            name: None,
            plugin: plugin.to_string(),
            config: Table::new(),
            grants: Table::new(),
            other: Table::new(),
        }
    }

    /// A `config` setting.
    pub fn config(mut self, k: &str, value: &str) -> Self {
        self.config = self.config.set(k, value);
        self
    }

    /// `config` settings, in order.
    pub fn configs<K: AsRef<str>, V: AsRef<str>>(
        mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (k, v) in pairs {
            self.config = self.config.set(k.as_ref(), v.as_ref());
        }
        self
    }

    /// A grant of the stage's own: `kind` (`kv`, `http`, `dirs`, ...) = `values`.
    pub fn grant(mut self, kind: &str, values: impl TomlValue) -> Self {
        self.grants = self.grants.set(kind, values);
        self
    }

    /// Any other key (`before`, `after`, `timeout`, `memory`, ...).
    pub fn set(mut self, k: &str, value: impl TomlValue) -> Self {
        self.other = self.other.set(k, value);
        self
    }

    fn body(&self) -> String {
        let mut text = String::new();
        if let Some(name) = &self.name {
            text.push_str(&format!("name = {}\n", toml_str(name)));
        }
        text.push_str(&format!("plugin = {}\n", toml_str(&self.plugin)));
        if !self.config.is_empty() {
            text.push_str(&format!("config = {}\n", self.config.inline()));
        }
        if !self.grants.is_empty() {
            text.push_str(&format!("grants = {}\n", self.grants.inline()));
        }
        text.push_str(&self.other.lines());
        text
    }
}

/// A runner file: top-level keys, then tables, written in a fixed layout.
#[derive(Clone, Debug, Default)]
pub struct RunnerFile {
    top: Table,
    targets: Table,
    grants: Table,
    proxies: Vec<(String, Table)>,
    stages: Vec<Stage>,
    hooks: Vec<(String, Stage)>,
}

impl RunnerFile {
    pub fn new() -> Self {
        Self::default()
    }

    /// `service = NAME`.
    pub fn service(mut self, name: &str) -> Self {
        self.top = self.top.set("service", name);
        self
    }

    /// `[targets] KEY = VALUE` (`consul`, `docker`).
    pub fn target(mut self, k: &str, value: &str) -> Self {
        self.targets = self.targets.set(k, value);
        self
    }

    /// `[grants] KIND = [VALUES]`: the grants `runner exec -f` reads.
    pub fn grant(mut self, kind: &str, values: impl TomlValue) -> Self {
        self.grants = self.grants.set(kind, values);
        self
    }

    /// `[proxies.NAME]` with `settings` (`config_dir`, `check`, `reload`, `driver`, ...).
    pub fn proxy(mut self, name: &str, settings: Table) -> Self {
        self.proxies.push((name.to_string(), settings));
        self
    }

    /// A `[[stages]]` entry, after those added before.
    pub fn stage(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// `[hooks.NAME]`.
    pub fn hook(mut self, name: &str, hook: Stage) -> Self {
        self.hooks.push((name.to_string(), hook));
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut tables: Vec<String> = Vec::new();
        if !self.top.is_empty() {
            tables.push(self.top.lines());
        }
        for (header, table) in [("targets", &self.targets), ("grants", &self.grants)] {
            if !table.is_empty() {
                tables.push(format!("[{header}]\n{}", table.lines()));
            }
        }
        for (name, settings) in &self.proxies {
            tables.push(format!("[proxies.{}]\n{}", key(name), settings.lines()));
        }
        for stage in &self.stages {
            tables.push(format!("[[stages]]\n{}", stage.body()));
        }
        for (name, hook) in &self.hooks {
            tables.push(format!("[hooks.{}]\n{}", key(name), hook.body()));
        }
        tables.join("\n")
    }

    /// Write the file as `dir/runner.toml`; its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        self.write_as(&dir.join("runner.toml"))
    }

    /// Write the file at `path`; the path.
    pub fn write_as(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.text())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_path_buf()
    }
}
