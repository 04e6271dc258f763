//! What a stage declares about itself (the `describe` export of the
//! `described-stage` world): its settings, typed, and its outputs. The
//! description comes from a plugin, so it is checked like any plugin value
//! (counts and sizes bounded, control characters dropped) before `runner
//! validate` uses it or `inspect` prints it.

use crate::bindings::runner::plugin::types as wit;
use serde::{Deserialize, Serialize};

/// Bounds on a description: a stage has a handful of settings.
const MAX_ENTRIES: usize = 256;
const MAX_NAME: usize = 128;
const MAX_TEXT: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Integer,
    Boolean,
    Duration,
    Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub name: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub doc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    #[serde(default)]
    pub doc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Description {
    #[serde(default)]
    pub summary: String,
    #[serde(default)]
    pub settings: Vec<Setting>,
    #[serde(default)]
    pub outputs: Vec<Output>,
}

/// A description a plugin returned that runner will not use.
#[derive(Debug, thiserror::Error)]
#[error("its description is unusable: {0}")]
pub struct BadDescription(String);

/// Copy what the plugin returned into runner's bounds. (wasmtime has
/// already copied it out of the plugin's memory, as it does a stage's
/// outcome: see SECURITY.md, "Known limits", on lists of aliased strings.)
pub(crate) fn lift(raw: wit::Description) -> Result<Description, BadDescription> {
    if raw.settings.len() > MAX_ENTRIES || raw.outputs.len() > MAX_ENTRIES {
        return Err(BadDescription(format!(
            "over {MAX_ENTRIES} settings or outputs"
        )));
    }
    let settings = raw
        .settings
        .into_iter()
        .map(|setting| {
            Ok(Setting {
                name: name(&setting.name)?,
                kind: match setting.kind {
                    wit::SettingKind::Text => Kind::Text,
                    wit::SettingKind::Integer => Kind::Integer,
                    wit::SettingKind::Boolean => Kind::Boolean,
                    wit::SettingKind::Duration => Kind::Duration,
                    wit::SettingKind::Url => Kind::Url,
                },
                default: setting.default.as_deref().map(text),
                required: setting.required,
                doc: text(&setting.doc),
            })
        })
        .collect::<Result<_, BadDescription>>()?;
    let outputs = raw
        .outputs
        .into_iter()
        .map(|output| {
            Ok(Output {
                name: name(&output.name)?,
                doc: text(&output.doc),
            })
        })
        .collect::<Result<_, BadDescription>>()?;
    Ok(Description {
        summary: text(&raw.summary),
        settings,
        outputs,
    })
}

/// A name: 1 to MAX_NAME printable characters.
fn name(n: &str) -> Result<String, BadDescription> {
    if n.is_empty() || n.len() > MAX_NAME || n.chars().any(|c| c.is_control()) {
        Err(BadDescription(format!(
            "a name must be 1 to {MAX_NAME} printable characters: {:?}",
            n.chars().take(40).collect::<String>()
        )))
    } else {
        Ok(n.to_string())
    }
}

/// Text for a terminal: control characters dropped, cut at MAX_TEXT bytes
/// (only that much is copied).
fn text(t: &str) -> String {
    let mut end = t.len().min(MAX_TEXT);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = t[..end].chars().filter(|c| !c.is_control()).collect();
    if end < t.len() {
        out.push('…');
    }
    out
}

/// `check.*` covers `check.health`; `*` covers anything.
fn covers(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Integer => "integer",
            Kind::Boolean => "boolean",
            Kind::Duration => "duration",
            Kind::Url => "url",
        }
    }

    /// Whether literal `value` is of this kind; the error says what it expects.
    fn check(self, value: &str) -> Result<(), String> {
        let ok = match self {
            Kind::Text => true,
            Kind::Integer => value.trim().parse::<i64>().is_ok(),
            Kind::Boolean => matches!(value, "true" | "false"),
            Kind::Duration => humantime::parse_duration(value.trim()).is_ok(),
            Kind::Url => {
                url::Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Kind::Integer => "a whole number, e.g. 3".into(),
                Kind::Boolean => "true or false".into(),
                Kind::Duration => "a duration, e.g. 30s or 5m".into(),
                Kind::Url => "an http:// or https:// URL".into(),
                Kind::Text => String::new(),
            })
        }
    }
}

impl Description {
    pub fn setting(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| covers(&s.name, key))
    }

    pub fn outputs_key(&self, key: &str) -> bool {
        self.outputs.iter().any(|o| covers(&o.name, key))
    }

    /// Problems with `config` (key → value as written; values holding a
    /// `${...}` reference are checked by the stage when it runs).
    pub fn check_config<'a>(
        &self,
        config: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let names = || {
            self.settings
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (key, value) in config.clone() {
            match self.setting(key) {
                None => problems.push(format!(
                    "setting \"{key}\" is not one the plugin declares (it has: {})",
                    if self.settings.is_empty() {
                        "none".into()
                    } else {
                        names()
                    }
                )),
                Some(setting) if !value.contains("${") => {
                    if let Err(expects) = setting.kind.check(value) {
                        problems.push(format!(
                            "setting \"{key}\" = {value:?} is not a {}: it expects {expects}",
                            setting.kind.name()
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for setting in self.settings.iter().filter(|s| s.required) {
            if !config
                .clone()
                .into_iter()
                .any(|(k, _)| covers(&setting.name, k))
            {
                problems.push(format!(
                    "setting \"{}\" is required ({}): add it to the stage's config",
                    setting.name,
                    if setting.doc.is_empty() {
                        setting.kind.name()
                    } else {
                        &setting.doc
                    }
                ));
            }
        }
        problems
    }

    /// The settings and outputs, for `runner plugin inspect`.
    pub fn report(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        if !self.summary.is_empty() {
            let _ = writeln!(out, "\n{}", self.summary);
        }
        let _ = writeln!(out, "\nsettings:");
        if self.settings.is_empty() {
            let _ = writeln!(out, "  none");
        }
        let width = self
            .settings
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(0);
        for s in &self.settings {
            let mut extra = String::new();
            if s.required {
                extra.push_str(", required");
            }
            if let Some(default) = &s.default {
                let _ = write!(extra, ", default {default:?}");
            }
            let _ = writeln!(
                out,
                "  {:width$}  {}{extra}  {}",
                s.name,
                s.kind.name(),
                s.doc
            );
        }
        let _ = writeln!(out, "\noutputs:");
        if self.outputs.is_empty() {
            let _ = writeln!(out, "  none");
        }
        let width = self.outputs.iter().map(|o| o.name.len()).max().unwrap_or(0);
        for o in &self.outputs {
            let _ = writeln!(out, "  {:width$}  {}", o.name, o.doc);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> Description {
        Description {
            summary: "s".into(),
            settings: vec![
                Setting {
                    name: "base_url".into(),
                    kind: Kind::Url,
                    default: None,
                    required: true,
                    doc: "where".into(),
                },
                Setting {
                    name: "retries".into(),
                    kind: Kind::Integer,
                    default: Some("3".into()),
                    required: false,
                    doc: String::new(),
                },
                Setting {
                    name: "check.*".into(),
                    kind: Kind::Text,
                    default: None,
                    required: false,
                    doc: String::new(),
                },
            ],
            outputs: vec![Output {
                name: "color".into(),
                doc: String::new(),
            }],
        }
    }

    #[test]
    fn unknown_mistyped_and_missing_settings_are_named() {
        let d = description();
        let ok = [
            ("base_url", "http://127.0.0.1:1"),
            ("check.health", "GET / 200"),
        ];
        assert!(d.check_config(ok).is_empty());
        let problems = d.check_config([
            ("retries", "three"),
            ("colour", "x"),
            ("base_url", "${env.URL}"),
        ]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("is not a integer") || problems[0].contains("whole number"));
        assert!(problems[1].contains("\"colour\" is not one the plugin declares"));
        let missing = d.check_config([("retries", "2")]);
        assert!(
            missing[0].contains("\"base_url\" is required"),
            "{missing:?}"
        );
        assert!(d.outputs_key("color") && !d.outputs_key("colour"));
    }

    #[test]
    fn names_and_texts_from_a_plugin_are_bounded_and_printable() {
        assert!(name("a\nb").is_err());
        assert!(name("").is_err());
        assert!(name(&"n".repeat(MAX_NAME + 1)).is_err());
        assert_eq!(name("check.*").unwrap(), "check.*");
        let doc = text(&"\u{1b}[31mred\u{1b}[0m".repeat(500));
        assert!(!doc.contains('\u{1b}') && doc.ends_with('…'));
        assert!(doc.len() <= MAX_TEXT + '…'.len_utf8());
        assert_eq!(text(&"é".repeat(MAX_TEXT)).chars().last(), Some('…'));
    }
}
