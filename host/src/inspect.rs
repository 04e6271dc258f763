//! `runner plugin inspect`: what a component imports and exports, whether it
//! is a runner stage, and which grants it can make use of.

use crate::caps::ImportUse;
use std::fmt::Write;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How runner treats one imported interface: the grant that serves it, or
/// the WASI policy (from the capability list, [`crate::caps::IMPORTS`]).
fn grant_for(import: &str) -> Option<&'static str> {
    crate::caps::import_use(import).map(|u| match u {
        ImportUse::Capability(cap) => cap.flag_hint,
        ImportUse::Wasi(policy) => policy,
    })
}

/// A human-readable report on a compiled component of `size` bytes.
pub fn report(
    engine: &Engine,
    path: &std::path::Path,
    size: usize,
    component: &Component,
) -> String {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    report_names(
        &[("plugin", path.display().to_string())],
        size as u64,
        &imports,
        &exports,
    )
}

/// The report from names alone (a registry plugin's config), after the
/// `header` lines (label, value).
pub fn report_names(
    header: &[(&str, String)],
    size: u64,
    imports: &[String],
    exports: &[String],
) -> String {
    let unknown: Vec<&String> = imports.iter().filter(|i| grant_for(i).is_none()).collect();
    let is_stage = exports.iter().any(|e| e == "run") && unknown.is_empty();

    let mut out = String::new();
    for (label, value) in header {
        let _ = writeln!(out, "{:9}{value}", format!("{label}:"));
    }
    let _ = writeln!(out, "size:    {}", bytesize::ByteSize(size));
    // The contract version it was built against, from its imports.
    let targets = imports
        .iter()
        .find_map(|i| i.strip_prefix("runner:plugin/")?.split_once('@'))
        .map(|(_, version)| format!("@{version}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "world:   {}",
        if is_stage {
            format!("runner:plugin/stage{targets} (runnable with `runner exec`)")
        } else {
            "not a runner stage (needs export `run` and only runner/WASI imports)".into()
        }
    );
    let _ = writeln!(out, "\nexports:");
    for e in exports {
        let _ = writeln!(out, "  {e}");
    }
    let _ = writeln!(out, "\nimports and the grants they use:");
    let width = imports.iter().map(|i| i.len()).max().unwrap_or(0);
    for i in imports {
        let grant = grant_for(i).unwrap_or("NOT PROVIDED by runner: this plugin cannot be loaded");
        let _ = writeln!(out, "  {i:width$}  {grant}");
    }
    let mut grants: Vec<&str> = Vec::new();
    for grant in imports
        .iter()
        .filter_map(|i| grant_for(i))
        .filter(|g| g.starts_with("--"))
    {
        if !grants.contains(&grant) {
            grants.push(grant);
        }
    }
    let _ = writeln!(
        out,
        "\ngrants it can use: {}",
        if grants.is_empty() {
            "none".to_string()
        } else {
            grants.join("; ")
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_show_the_grant_that_serves_them() {
        // Which interface each capability serves is tested with the list
        // (caps::tests); here, what `inspect` prints for each kind.
        assert_eq!(
            grant_for("runner:plugin/kv@0.1.0"),
            Some("--allow-kv PREFIX")
        );
        assert_eq!(
            grant_for("wasi:sockets/tcp@0.2.3"),
            Some("never granted: use runner:plugin/http")
        );
        assert_eq!(grant_for("acme:thing/x"), None);
    }
}
