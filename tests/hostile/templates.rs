//! Hostile plugins: templates that would crash the host or outrun it. The
//! probe hands its `text` to the host's template engine (`template.render`,
//! which shares the renderer with `template.render-string`); every render must
//! end in a clear error naming the cap, with runner exiting normally.

use crate::common::{Env, Output, run};

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
    run(env.probe("template").args([
        "--allow-template-out",
        &grant,
        "--config",
        &format!("text={text}"),
        "--config",
        &format!("dest={grant}/site.conf"),
    ]))
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
