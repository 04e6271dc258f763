//! Driving the hostile guest (`tests/guests/hostile`): a list of host calls
//! (`call.LABEL=OP`, `arg.LABEL.NAME=VALUE`) and assertions on what the host
//! answered each one (`LABEL=ok` or `LABEL=KIND: MESSAGE` in the outputs).

use super::{Env, Exec, Output, plugin};

/// The calls one hostile run makes, in order.
#[derive(Default, Clone)]
pub struct Calls {
    settings: Vec<(String, String)>,
}

impl Calls {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add call `label` of operation `op` with `args` (see the guest's docs).
    pub fn call(mut self, label: &str, op: &str, args: &[(&str, &str)]) -> Self {
        self.settings
            .push((format!("call.{label}"), op.to_string()));
        for (name, value) in args {
            self.settings
                .push((format!("arg.{label}.{name}"), value.to_string()));
        }
        self
    }

    /// The settings as `(key, value)` (for a pipeline or hook `config` table).
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut all = vec![("mode".to_string(), "calls".to_string())];
        all.extend(self.settings.iter().cloned());
        all
    }

    /// The settings as a TOML inline table.
    pub fn toml(&self) -> String {
        let pairs: Vec<String> = self
            .settings()
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `runner exec --plugin hostile` making `calls`; add grants to the result.
pub fn exec(env: &Env, calls: &Calls) -> Exec {
    let mut exec = env.exec(plugin("hostile"));
    exec.configs(calls.settings());
    exec
}

impl Output {
    /// What the host answered call `label`: `ok` or `KIND: MESSAGE`.
    pub fn answer(&self, label: &str) -> String {
        self.output(label).unwrap_or_else(|| {
            panic!(
                "no answer for call {label}\nstdout:\n{}\nstderr:\n{}",
                self.stdout,
                tail(&self.stderr)
            )
        })
    }
}

/// Every way a run fell short of the contract, collected so one failing
/// test shows all of them (which refusals were missing, what was damaged).
pub struct Verdict<'a> {
    out: &'a Output,
    problems: Vec<String>,
}

impl<'a> Verdict<'a> {
    pub fn new(out: &'a Output) -> Self {
        Self {
            out,
            problems: Vec::new(),
        }
    }

    /// Call `label` was refused as `kind` with a message containing every one of `needles`.
    pub fn refused(&mut self, label: &str, kind: &str, needles: &[&str]) {
        self.refused_as(label, &[kind], needles)
    }

    /// Call `label` was refused as one of `kinds`, its message containing every one of `needles`.
    pub fn refused_as(&mut self, label: &str, kinds: &[&str], needles: &[&str]) {
        let answer = self.out.answer(label);
        let kind_ok = kinds.iter().any(|k| answer.starts_with(&format!("{k}: ")));
        let missing = needles.iter().any(|n| !answer.contains(*n));
        if !kind_ok || missing {
            self.problems.push(format!(
                "call {label}: expected {} containing {needles:?}, got: {answer}",
                kinds.join(" or "),
            ));
        }
    }

    /// Record `problem` unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl Into<String>) {
        if !ok {
            self.problems.push(problem.into());
        }
    }

    /// Panic listing every problem, if there were any.
    pub fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{} problems:\n  {}\n--- stdout:\n{}",
            self.problems.len(),
            self.problems.join("\n  "),
            self.out.stdout
        );
    }
}

/// The end of a long stderr, for failure messages.
pub fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
