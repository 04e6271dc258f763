//! Hostile plugins: templates that would crash the host or outrun it. The
//! probe hands its `text` to the host's template engine (`template.render`,
//! which shares the renderer with `template.render-string`); every render must
//! end in a clear error naming the cap, with runner exiting normally.

use crate::common::{Env, Output, RunnerFile, Table, run};

/// `{{define "tN"}}` calling `t(N+1)` twice, 40 levels deep: 2^40 leaves.
fn exponential(leaf: &str) -> String {
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!(
            "{{{{define \"t{i}\"}}}}{{{{template \"t{n}\"}}}}{{{{template \"t{n}\"}}}}{{{{end}}}}",
            n = i + 1
        ));
    }
    text.push_str(&format!(
        "{{{{define \"t40\"}}}}{leaf}{{{{end}}}}{{{{template \"t0\"}}}}"
    ));
    text
}

/// Render `text` through the probe into a granted output directory.
fn render(env: &Env, text: &str) -> Output {
    let out = env.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let grant = out.display().to_string();
    env.probe("template")
        .allow_template_out(&grant)
        .config("text", text)
        .config("dest", format!("{grant}/site.conf"))
        .run()
}

/// Runner ended by itself (no signal, no panic exit) with the stage's error.
fn refused(out: Output, cap: &str) -> Output {
    assert!(
        out.code != -1 && out.code != 101 && out.code != 134,
        "runner crashed (code {}):\n{}",
        out.code,
        out.stderr
    );
    let out = out.expect_code(1).stderr_has(cap);
    assert!(
        !out.stderr.contains("panicked"),
        "a panic reached stderr:\n{}",
        out.stderr
    );
    out
}

#[test]
fn self_recursive_template_is_a_nesting_error_not_a_stack_overflow() {
    let env = Env::new();
    refused(
        render(
            &env,
            r#"{{define "r"}}x{{template "r"}}{{end}}{{template "r"}}"#,
        ),
        "nesting deeper than 64 levels",
    );
}

#[test]
fn mutually_recursive_templates_are_a_nesting_error() {
    let env = Env::new();
    refused(
        render(
            &env,
            r#"{{define "a"}}{{template "b"}}{{end}}{{define "b"}}{{template "a"}}{{end}}{{template "a"}}"#,
        ),
        "nesting deeper than 64 levels",
    );
}

#[test]
fn printf_width_over_the_cap_is_an_error_not_a_panic() {
    let env = Env::new();
    refused(
        render(&env, r#"{{printf "%100000d" 1}}"#),
        "printf width or precision 100000 is over the limit of 1024",
    );
    refused(
        render(&env, r#"{{printf "%.*f" 70000 1.5}}"#),
        "printf width or precision 70000",
    );
}

#[test]
fn exponential_expansion_stops_at_the_step_budget() {
    let env = Env::new();
    // With output and without: both end at the budget (the command's own
    // 120 s timeout in `Env::runner` is what would catch a hang).
    refused(render(&env, &exponential("x")), "more than 2000000 steps");
    refused(render(&env, &exponential("")), "more than 2000000 steps");
}

#[test]
fn deep_syntax_nesting_is_an_error_not_a_stack_overflow() {
    let env = Env::new();
    let text = format!("{{{{{}1{}}}}}", "(".repeat(5000), ")".repeat(5000));
    refused(render(&env, &text), "nested deeper than 100 levels");
}

#[test]
fn runner_is_usable_after_a_hostile_template() {
    let env = Env::new();
    refused(
        render(
            &env,
            r#"{{define "r"}}{{template "r"}}{{end}}{{template "r"}}"#,
        ),
        "nesting deeper than 64 levels",
    );
    let ok = render(&env, r#"{{define "p"}}<{{.}}>{{end}}{{template "p" "ok"}}"#).expect_code(0);
    assert_eq!(ok.output("changed").as_deref(), Some("true"));
    assert_eq!(
        std::fs::read_to_string(env.path().join("out/site.conf")).unwrap(),
        "<ok>"
    );
}

/// A proxy grant opens the proxy's config directory to the operator's
/// templates only: text the plugin wrote (inline, or a file in a directory
/// it can write) could add any directive to the proxy (`server { root / }`).
/// An explicit `--allow-template-out` for the directory relaxes it.
#[test]
fn a_proxy_grant_renders_only_the_operators_templates() {
    let env = Env::new();
    for dir in ["proxy", "tpl", "scratch"] {
        std::fs::create_dir_all(env.path().join(dir)).unwrap();
    }
    std::fs::write(
        env.path().join("tpl/ok.ctmpl"),
        "upstream app { server 127.0.0.1:1; }\n",
    )
    .unwrap();
    std::fs::write(
        env.path().join("scratch/evil.ctmpl"),
        "server { root /; }\n",
    )
    .unwrap();
    RunnerFile::new()
        .proxy(
            "edge",
            Table::new()
                .set("config_dir", "proxy")
                .set("check", ["true"])
                .set("reload", ["true"]),
        )
        .write(env.path());
    let dest = env.path().join("proxy/app.conf");
    let probe = |source: (&str, &str), extra: &[&str]| {
        env.probe("template")
            .file("runner.toml")
            .allow_proxy("edge")
            .allow_dir("tpl")
            .allow_dir("scratch:/scratch:rw")
            .args(extra)
            .config(source.0, source.1)
            .config("dest", dest.display())
            .run()
    };
    // Inline text, and a file from the plugin's own writable directory: refused.
    for source in [
        ("text", "server { root /; }"),
        ("file", "/scratch/evil.ctmpl"),
    ] {
        probe(source, &[])
            .expect_code(1)
            .stderr_has("only the operator's templates")
            .stderr_has("--allow-template-out");
        assert!(!dest.exists(), "{source:?} wrote the proxy's config");
    }
    // A file under a directory the plugin can write, even one inside a
    // read-only grant, is the plugin's.
    std::fs::create_dir_all(env.path().join("tpl/out")).unwrap();
    std::fs::write(
        env.path().join("tpl/out/evil.ctmpl"),
        "server { root /; }\n",
    )
    .unwrap();
    let out_dir = env.path().join("tpl/out").display().to_string();
    probe(
        ("file", "tpl/out/evil.ctmpl"),
        &["--allow-template-out", &out_dir],
    )
    .expect_code(1)
    .stderr_has("only the operator's templates");
    assert!(!dest.exists());
    // The operator's template from a read-only grant renders.
    probe(("file", "tpl/ok.ctmpl"), &[]).expect_code(0);
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        "upstream app { server 127.0.0.1:1; }\n"
    );
    // An explicit output grant of the directory lets the plugin write raw config.
    let proxy_dir = env.path().join("proxy").display().to_string();
    probe(("text", "raw"), &["--allow-template-out", &proxy_dir]).expect_code(0);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "raw");
}

/// A template reads data under the plugin's grants, checked as a direct read:
/// runner's records stay out of reach (`*` included), bad keys are invalid,
/// and a listing shows nothing of the reserved namespace.
#[test]
fn templates_read_no_more_than_the_plugin_could() {
    let env = Env::new();
    run(env.runner().args(["kv", "put", "books-ms/color", "blue"])).expect_code(0);
    let out = env.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let grant = out.display().to_string();
    let render = |text: &str| {
        env.probe("template")
            .allow_kv("*")
            .allow_template_out(&grant)
            .config("text", text)
            .config("dest", format!("{grant}/x.conf"))
            .run()
    };
    // The operator (not a plugin) may write there: a record of runner's.
    run(env
        .runner()
        .args(["kv", "put", "_runner/books-ms/migrated", "1"]))
    .expect_code(0);
    render(r#"{{key "_runner/books-ms/migrated"}}"#)
        .expect_code(1)
        .stderr_has("reserved");
    render(r#"{{key "books-ms/../_runner/books-ms/migrated"}}"#)
        .expect_code(1)
        .stderr_has("invalid");
    // A raw prefix (consul-template lists every key starting with it) that
    // covers runner's namespace lists only what is visible.
    render(r#"{{range ls "_"}}{{.Path}};{{end}}{{range tree "_r"}}{{.Path}};{{end}}{{range tree "b"}}{{.Path}};{{end}}"#)
        .expect_code(0);
    let listed = std::fs::read_to_string(out.join("x.conf")).unwrap();
    assert!(!listed.contains("_runner"), "{listed}");
    assert!(listed.contains("books-ms/color"), "{listed}");
}
