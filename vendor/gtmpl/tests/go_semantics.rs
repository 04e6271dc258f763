//! Go text/template features gtmpl lacked (runner patch), checked against
//! what Go 1.19 prints: every expected output below was produced by Go
//! 1.19's `text/template` over the same data (a `map[string]interface{}`,
//! see `data`), with consul-template's `executeTemplate` added as its
//! `funcs.go` defines it. An expected error is a part of Go's message (Go
//! adds its own position prefix, "template: t:1:2: executing ...").

use gtmpl::{Context, ExecError, Limits, Template, Value};
use std::collections::HashMap;

fn list(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

/// The data of every case, as the Go program has it:
/// `map[string]interface{}{"list": []interface{}{"a", "b", "c", "d"}, ...}`.
fn data() -> Value {
    let mut m: HashMap<String, Value> = HashMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("list", list(&["a", "b", "c", "d"]));
    put(
        "nums",
        Value::Array(vec![Value::from(1), Value::from(2), Value::from(3)]),
    );
    put("empty", Value::Array(vec![]));
    let mut inner: HashMap<String, Value> = HashMap::new();
    inner.insert("x".into(), Value::from("1"));
    inner.insert("y".into(), Value::from(2));
    put("m", Value::Map(inner));
    put("s", Value::from("hello"));
    put("u", Value::from("héllo"));
    put("html", Value::from("<a href='x'>&\"</a>\0"));
    put(
        "js",
        Value::from(
            "it's <b> \"x\" & y=1\n\t\\ é \u{2028} \u{ad} \x7f \u{1F600} \u{E0001} \0 \u{600}",
        ),
    );
    put("n", Value::from(3));
    put("t", Value::from(true));
    put("nil", Value::Nil);
    Value::Map(m)
}

fn template(limits: Limits) -> Template {
    let mut t = Template {
        name: "t".into(),
        limits,
        ..Template::default()
    };
    t.enable_execute_template();
    t
}

/// Renders `text` over `data()`; an error is "PARSE: …" or "EXEC: …".
fn render_with(limits: Limits, text: &str) -> Result<String, String> {
    let mut t = template(limits);
    t.parse(text).map_err(|e| format!("PARSE: {}", e))?;
    t.render(&Context::from(data()))
        .map_err(|e| format!("EXEC: {}", e))
}

fn render(text: &str) -> Result<String, String> {
    render_with(Limits::default(), text)
}

enum Go {
    /// Go prints this.
    Out(&'static str),
    /// Go fails to parse, with this in the message.
    Parse(&'static str),
    /// Go fails to execute, with this in the message.
    Exec(&'static str),
}

use Go::*;

fn check(cases: &[(&str, Go)]) {
    let mut failures = vec![];
    for (text, want) in cases {
        let got = render(text);
        let ok = match (want, &got) {
            (Out(w), Ok(g)) => w == g,
            (Parse(w), Err(g)) => g.starts_with("PARSE: ") && g.contains(w),
            (Exec(w), Err(g)) => g.starts_with("EXEC: ") && g.contains(w),
            _ => false,
        };
        if !ok {
            let want = match want {
                Out(w) => format!("output {:?}", w),
                Parse(w) => format!("parse error with {:?}", w),
                Exec(w) => format!("exec error with {:?}", w),
            };
            failures.push(format!("{}\n   want {}\n    got {:?}", text, want, got));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn variable_assignment() {
    check(&[
        (
            r#"{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}{{if true}}{{$x = 3}}{{end}}{{$x}}"#,
            Out("213"),
        ),
        (
            r#"{{$first := true}}{{range .list}}{{if not $first}},{{end}}{{$first = false}}{{.}}{{end}}"#,
            Out("a,b,c,d"),
        ),
        (
            r#"{{$c := ""}}{{range $i, $e := .list}}{{$c = print $c $i}}{{end}}{{$c}}"#,
            Out("0123"),
        ),
        (
            r#"{{range $v := .list}}{{$v = "z"}}{{$v}}{{end}}"#,
            Out("zzzz"),
        ),
        (
            r#"{{$x := 1}}{{with $x := 2}}{{$x}}{{end}}{{$x}}"#,
            Out("21"),
        ),
        (
            r#"{{$x := 1}}{{range .list}}{{$x := .}}{{end}}{{$x}}"#,
            Out("1"),
        ),
        (r#"{{$x := 1}}{{$x := 2}}{{$x}}"#, Out("2")),
        (
            r#"{{$x := 1}}{{with $y := 5}}{{$x = $y}}{{end}}{{$x}}"#,
            Out("5"),
        ),
        (r#"{{$x := 1}}{{$x = 2}}{{$x = "s"}}{{$x}}"#, Out("s")),
        (
            r#"{{$x := 1}}{{if $x = 0}}yes{{else}}no{{end}}{{$x}}"#,
            Out("no0"),
        ),
        (r#"{{$x := 1}}{{print ($x = 2)}}"#, Out("2")),
        (
            r#"{{$x := 1}}{{template "b" ($x = 2)}}{{define "b"}}{{.}}{{end}}"#,
            Out("2"),
        ),
        (
            r#"{{range $i, $v := .list}}{{$w := $v}}{{if $i}}{{$w = "Z"}}{{end}}{{$w}}{{end}}"#,
            Out("aZZZ"),
        ),
        (
            r#"{{$x := "a"}}{{range .list}}{{$x = print $x .}}{{end}}{{$x}}"#,
            Out("aabcd"),
        ),
        (
            r#"{{$x := "a"}}{{range $x := .list}}{{$x = "q"}}{{end}}{{$x}}"#,
            Out("a"),
        ),
        (
            r#"{{$x := 0}}{{with $x}}{{else}}{{$x = 7}}{{end}}{{$x}}"#,
            Out("7"),
        ),
        (
            r#"{{$x := 1}}{{if true}}{{$x := 2}}{{$x = 3}}{{end}}{{$x}}"#,
            Out("1"),
        ),
        (
            r#"{{$x := 1}}{{range .list}}{{$x := 2}}{{end}}{{$x = 5}}{{$x}}"#,
            Out("5"),
        ),
        (r#"{{$ = 5}}{{$}}"#, Out("5")),
        (r#"{{range .list}}{{$x := 1}}{{$x = 2}}{{end}}"#, Out("")),
        (r#"{{with $x := 1}}{{$x = 2}}{{$x}}{{end}}"#, Out("2")),
        (
            r#"{{$x := 1}}{{with $x = 2}}{{$x}}{{end}}{{$x}}"#,
            Out("22"),
        ),
        (
            r#"{{$x := 0}}{{range .list}}{{if eq . "c"}}{{break}}{{end}}{{$x = .}}{{end}}{{$x}}"#,
            Out("b"),
        ),
        // Go 1.19 parses `=` in a range too: the pipeline assigns the
        // variables, then each pass sets the top one or two variables of
        // the stack (Go's `setTopVar`), whatever they are.
        (
            r#"{{$i := 0}}{{$v := ""}}{{range $i, $v = .list}}[{{$i}}{{$v}}]{{end}} {{$i}} {{$v}}"#,
            Out("[0a][1b][2c][3d] 3 d"),
        ),
        (
            r#"{{$v := ""}}{{range $v = .list}}[{{$v}}]{{end}} {{$v}}"#,
            Out("[a][b][c][d] d"),
        ),
        (
            r#"{{$i := 0}}{{$v := ""}}{{$z := 9}}{{range $i, $v = .list}}{{end}}{{$i}} {{$v}} {{$z}}"#,
            Out("[a b c d] 3 d"),
        ),
        (
            r#"{{$i := 0}}{{$z := 9}}{{range $i = .list}}({{$i}}{{$z}}){{end}}{{$i}} {{$z}}"#,
            Out("([a b c d]a)([a b c d]b)([a b c d]c)([a b c d]d)[a b c d] d"),
        ),
        (r#"{{$x := 1}}{{range $x = .list}}{{end}}{{$x}}"#, Out("d")),
    ]);
}

#[test]
fn assignment_errors() {
    check(&[
        // Go 1.19 parses an assignment to an undeclared variable (the
        // parser records the name as it does for `:=`) and fails running it.
        (r#"{{$x = 1}}"#, Exec("undefined variable: $x")),
        (r#"{{$x = 1}}{{$x}}"#, Exec("undefined variable: $x")),
        (
            r#"{{if true}}{{$y := 1}}{{end}}{{$y = 2}}"#,
            Exec("undefined variable: $y"),
        ),
        (
            r#"{{range $v = .list}}{{end}}"#,
            Exec("undefined variable: $v"),
        ),
        (
            r#"{{$a := 5}}{{range $i, $v = .list}}{{end}}"#,
            Exec("undefined variable: $i"),
        ),
        (
            r#"{{$x := 1}}{{define "a"}}{{$x = 2}}{{end}}{{template "a"}}"#,
            Exec("undefined variable: $x"),
        ),
        (r#"{{$x = 1 | print}}"#, Exec("undefined variable: $x")),
        // Using a variable declared nowhere is still a parse error.
        (
            r#"{{define "v"}}{{$x}}{{end}}{{$x := 1}}"#,
            Parse("undefined variable $x"),
        ),
        (
            r#"{{$x, $y := 1}}"#,
            Parse("too many declarations in command"),
        ),
        (
            r#"{{$x := 1}}{{$x, $y = 1, 2}}"#,
            Parse("too many declarations in command"),
        ),
        (r#"{{$x=1}}"#, Parse("bad character")),
        (
            r#"{{$x := 1}}{{$x.foo = 2}}"#,
            Parse("unexpected = in operand"),
        ),
        (
            r#"{{range $i, 1}}{{end}}"#,
            Parse("range can only initialize variables"),
        ),
        // Go indexes out of range and panics here; this is an error.
        (
            r#"{{range $, $ = .list}}{{end}}"#,
            Exec("var context smaller than 2"),
        ),
    ]);
}

#[test]
fn break_and_continue() {
    check(&[
        (
            r#"{{range .list}}{{if eq . "c"}}{{break}}{{end}}{{.}}{{end}}"#,
            Out("ab"),
        ),
        (
            r#"{{range .list}}{{if eq . "b"}}{{continue}}{{end}}{{.}}{{end}}"#,
            Out("acd"),
        ),
        (
            r#"{{range .list}}{{range $.nums}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}{{.}}{{end}}"#,
            Out("1a1b1c1d"),
        ),
        (
            r#"{{range .list}}[{{range $.nums}}{{if eq . 2}}{{continue}}{{end}}{{.}}{{end}}{{.}}]{{end}}"#,
            Out("[13a][13b][13c][13d]"),
        ),
        (
            r#"{{range .list}}{{with .}}{{break}}{{end}}x{{end}}y"#,
            Out("y"),
        ),
        (
            r#"{{range $i, $e := .list}}{{$x := $i}}{{if eq $i 1}}{{continue}}{{end}}{{$x}}{{end}}"#,
            Out("023"),
        ),
        (
            r#"{{range $i, $e := .list}}{{with $e}}{{if eq $i 2}}{{break}}{{end}}{{end}}{{.}}{{end}}"#,
            Out("ab"),
        ),
        (r#"{{range .empty}}{{break}}{{else}}E{{end}}"#, Out("E")),
        (r#"{{range .list}}{{ break }}{{end}}ok"#, Out("ok")),
        (r#"{{range .list}}{{- break -}}{{end}}ok"#, Out("ok")),
        (
            r#"{{range .list}}{{print "break"}}{{end}}"#,
            Out("breakbreakbreakbreak"),
        ),
        (r#"{{range .m}}{{.}}{{break}}{{end}}"#, Out("1")),
        (
            r#"{{range $k, $v := .m}}{{if eq $k "x"}}{{continue}}{{end}}{{$k}}={{$v}}{{end}}"#,
            Out("y=2"),
        ),
        (
            r#"{{$x := 1}}{{range .list}}{{$x = 2}}{{break}}{{end}}{{$x}}"#,
            Out("2"),
        ),
        (
            r#"{{define "T"}}{{.}}{{end}}{{range .list}}{{template "T" .}}{{break}}{{end}}"#,
            Out("a"),
        ),
        (
            r#"{{range .list}}{{.}}{{if eq . "b"}}{{break}}{{end}}{{else}}E{{end}}"#,
            Out("ab"),
        ),
        // In an inner range's else branch (allowed by the outer range), a
        // break ends only that branch (Go's inner walkRange recovers it),
        // while a continue goes on to the outer range.
        (
            r#"{{range .list}}[{{range $.empty}}{{else}}E{{break}}F{{end}}{{.}}]{{end}}"#,
            Out("[Ea][Eb][Ec][Ed]"),
        ),
        (
            r#"{{range .list}}[{{range $.empty}}{{else}}E{{continue}}F{{end}}{{.}}]{{end}}"#,
            Out("[E[E[E[E"),
        ),
        (
            r#"{{define "b"}}{{range .}}{{if eq . "c"}}{{break}}{{end}}{{.}}{{end}}{{end}}{{executeTemplate "b" .list}}"#,
            Out("ab"),
        ),
    ]);
}

#[test]
fn break_and_continue_outside_range() {
    check(&[
        (r#"{{break}}"#, Parse("{{break}} outside {{range}}")),
        (r#"{{continue}}"#, Parse("{{continue}} outside {{range}}")),
        (
            r#"x{{if true}}{{break}}{{end}}"#,
            Parse("{{break}} outside {{range}}"),
        ),
        (
            r#"{{range .list}}{{else}}{{break}}{{end}}"#,
            Parse("{{break}} outside {{range}}"),
        ),
        (
            r#"{{range .list}}{{else}}{{continue}}{{end}}"#,
            Parse("{{continue}} outside {{range}}"),
        ),
        // A block is a template of its own.
        (
            r#"{{range .list}}{{block "x" .}}{{break}}{{end}}{{end}}"#,
            Parse("{{break}} outside {{range}}"),
        ),
        (
            r#"{{define "d"}}{{continue}}{{end}}"#,
            Parse("{{continue}} outside {{range}}"),
        ),
        (
            r#"{{range .list}}{{break 1}}{{end}}"#,
            Parse("unexpected 1 in {{break}}"),
        ),
        (r#"{{break := 1}}"#, Parse("unexpected := in {{break}}")),
        (r#"{{range .list}}{{continue}"#, Parse("")),
        (r#"{{range .list}}{{break}}"#, Parse("")),
    ]);
}

/// As in Go, `break` and `continue` are plain names when a function has
/// the name.
#[test]
fn break_is_a_name_when_a_function_has_it() {
    fn brk(_: &[Value]) -> Result<Value, gtmpl::FuncError> {
        Ok(Value::from("broke"))
    }
    let mut t = template(Limits::default());
    t.add_func("break", brk);
    t.parse(r#"{{break}}{{range .list}}{{break}}{{end}}"#)
        .unwrap();
    assert_eq!(
        t.render(&Context::from(data())).unwrap(),
        "brokebrokebrokebrokebroke"
    );
    // `continue` is still the keyword.
    let mut t = template(Limits::default());
    t.add_func("break", brk);
    assert!(t.parse(r#"{{continue}}"#).is_err());
}

#[test]
fn slice() {
    check(&[
        (
            r#"{{slice "hello" 1 3}}|{{slice "hello" 2}}|{{slice "hello"}}|{{slice .list 1 3}}|{{slice .list 1 2 3}}|{{slice .list 4}}"#,
            Out("el|llo|hello|[b c]|[b]|[]"),
        ),
        (r#"{{slice .u 1 3}}"#, Out("é")),
        (r#"{{slice .empty}}|{{slice .empty 0 0}}"#, Out("[]|[]")),
        (r#"{{slice "hello" 5}}|"#, Out("|")),
        (r#"{{slice .list 1 3 | len}}"#, Out("2")),
        (
            r#"{{slice "hello" 1 2 3}}"#,
            Exec("error calling slice: cannot 3-index slice a string"),
        ),
        (
            r#"{{slice .list 1 2 3 4}}"#,
            Exec("error calling slice: too many slice indexes: 4"),
        ),
        (
            r#"{{slice .list 3 2}}"#,
            Exec("error calling slice: invalid slice index: 3 > 2"),
        ),
        (
            r#"{{slice .list 1 3 2}}"#,
            Exec("error calling slice: invalid slice index: 3 > 2"),
        ),
        (
            r#"{{slice .list 0 5}}"#,
            Exec("error calling slice: index out of range: 5"),
        ),
        (
            r#"{{slice .list 1 2 5}}"#,
            Exec("error calling slice: index out of range: 5"),
        ),
        (
            r#"{{slice "hello" 6}}"#,
            Exec("error calling slice: index out of range: 6"),
        ),
        (
            r#"{{slice .list -1}}"#,
            Exec("error calling slice: index out of range: -1"),
        ),
        (
            r#"{{slice .list 1 -1}}"#,
            Exec("error calling slice: index out of range: -1"),
        ),
        (
            r#"{{slice .list 9223372036854775807}}"#,
            Exec("error calling slice: index out of range: 9223372036854775807"),
        ),
        (
            r#"{{slice "hello" 9223372036854775807 0}}"#,
            Exec("error calling slice: index out of range: 9223372036854775807"),
        ),
        (
            r#"{{slice .list -9223372036854775808}}"#,
            Exec("error calling slice: index out of range: -9223372036854775808"),
        ),
        (
            r#"{{slice .list 18446744073709551615}}"#,
            Exec("18446744073709551615 overflows int"),
        ),
        (
            r#"{{slice .list 'a'}}"#,
            Exec("error calling slice: index out of range: 97"),
        ),
        (
            r#"{{slice .nil 1}}"#,
            Exec("error calling slice: slice of untyped nil"),
        ),
        (
            r#"{{slice .missing}}"#,
            Exec("error calling slice: slice of untyped nil"),
        ),
        (
            r#"{{slice 3 1}}"#,
            Exec("error calling slice: can't slice item of type int"),
        ),
        (
            r#"{{slice .t 1}}"#,
            Exec("error calling slice: can't slice item of type bool"),
        ),
        (
            r#"{{slice .m 1}}"#,
            Exec("error calling slice: can't slice item of type map[string]interface {}"),
        ),
        (
            r#"{{slice .list "a"}}"#,
            Exec("error calling slice: cannot index slice/array with type string"),
        ),
        (
            r#"{{slice .list 1.5}}"#,
            Exec("error calling slice: cannot index slice/array with type float64"),
        ),
        (
            r#"{{slice .list true}}"#,
            Exec("error calling slice: cannot index slice/array with type bool"),
        ),
        (
            r#"{{slice .list .nil}}"#,
            Exec("error calling slice: cannot index slice/array with nil"),
        ),
        (
            r#"{{slice}}"#,
            Exec("wrong number of args for slice: want at least 1 got 0"),
        ),
    ]);
}

/// Go slices a string by bytes and prints the broken sequence as it is; a
/// string value here must be UTF-8, so the broken byte is U+FFFD.
#[test]
fn slice_inside_a_utf8_sequence() {
    // Go: "\xc3".
    assert_eq!(render(r#"{{slice .u 1 2}}"#).unwrap(), "\u{FFFD}");
}

#[test]
fn escapers() {
    check(&[
        (
            r#"{{html .html}}"#,
            Out("&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;\u{FFFD}"),
        ),
        (
            r#"{{html "a" 1 2 "b" 3 .t .nil}}"#,
            Out("a1 2b3 true&lt;no value&gt;"),
        ),
        (
            r#"{{html 1 2}}|{{html "a" "b"}}|{{html 1 "x" 2}}|{{html .list}}|{{html .m}}|{{html}}"#,
            Out("1 2|ab|1x2|[a b c d]|map[x:1 y:2]|"),
        ),
        (r#"{{html .missing}}"#, Out("&lt;no value&gt;")),
        (r#"{{.html | html}}"#, Out("&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;\u{FFFD}")),
        (
            r#"{{js .js}}"#,
            Out("it\\'s \\u003Cb\\u003E \\\"x\\\" \\u0026 y\\u003D1\\u000A\\u0009\\\\ é \\u2028 \\u00AD \x7f 😀 \\uE0001 \\u0000 \\u0600"),
        ),
        (
            r#"{{js .js 1 2 .nil}}"#,
            Out("it\\'s \\u003Cb\\u003E \\\"x\\\" \\u0026 y\\u003D1\\u000A\\u0009\\\\ é \\u2028 \\u00AD \x7f 😀 \\uE0001 \\u0000 \\u06001 2\\u003Cno value\\u003E"),
        ),
        (r#"{{js .u 1 2}}"#, Out("héllo1 2")),
        (r#"{{js "\u0001\u001f"}}"#, Out("\\u0001\\u001F")),
        (r#"{{js "\x7f\x1b"}}"#, Out("\x7f\\u001B")),
        (r#"{{html "\x00" "<" 1}}"#, Out("\u{FFFD}&lt;1")),
        (
            r#"{{urlquery "a b&c=d/é?~-_.*"}}"#,
            Out("a+b%26c%3Dd%2F%C3%A9%3F~-_.%2A"),
        ),
        (r#"{{urlquery 1 2 "x y"}}"#, Out("1+2x+y")),
        (r#"{{urlquery}}"#, Out("")),
        (r#"{{urlquery .u "+&"}}"#, Out("h%C3%A9llo%2B%26")),
    ]);
}

/// `print` and `println` print their operands as Go's fmt does (gtmpl
/// printed lists in Rust's debug form and nil as "nil").
#[test]
fn print_as_go_sprint() {
    check(&[
        (
            r#"{{print 1 2 "a" 3 4 .t .nil .list}}"#,
            Out("1 2a3 4 true <nil> [a b c d]"),
        ),
        (
            r#"{{print .list .m 1.5 .nil}}|{{println .nil .missing 1.0}}"#,
            Out("[a b c d] map[x:1 y:2] 1.5 <nil>|<nil> <nil> 1\n"),
        ),
        // (Go prints `print nil` as "<nil>" too; gtmpl takes no `nil`
        // argument, a difference of its own.)
        (r#"{{print .missing}}|{{print .nil}}"#, Out("<nil>|<nil>")),
        (r#"{{println 1 2 "a"}}"#, Out("1 2 a\n")),
        (r#"{{print}}|{{println}}"#, Out("|\n")),
    ]);
}

#[test]
fn no_value() {
    check(&[(
        r#"{{.missing}}|{{index .m "missing"}}|{{.nil}}|{{index .m "x"}}"#,
        Out("<no value>|<no value>|<no value>|1"),
    )]);
    // Go prints a nil top-level dot as "<no value>".
    let mut t = Template::default();
    t.parse("{{.}}|{{.x}}").unwrap();
    assert_eq!(
        t.render(&Context::empty()).unwrap(),
        "<no value>|<no value>"
    );
}

#[test]
fn execute_template() {
    check(&[
        (
            r#"{{define "greet"}}hello {{.}}{{end}}{{executeTemplate "greet"}}|{{executeTemplate "greet" "bob"}}|{{executeTemplate "greet" .s | len}}"#,
            Out("hello <no value>|hello bob|11"),
        ),
        (
            r#"{{define "d"}}{{$}}/{{.}}{{end}}{{executeTemplate "d" .list}}"#,
            Out("[a b c d]/[a b c d]"),
        ),
        (
            r#"{{define "p"}}[{{.}}]{{end}}{{"x" | executeTemplate "p"}}"#,
            Out("[x]"),
        ),
        (
            r#"{{define "m"}}{{.missing}}|{{.x}}{{end}}{{executeTemplate "m" .m}}|{{executeTemplate "m"}}"#,
            Out("<no value>|1|<no value>|<no value>"),
        ),
        (
            r#"{{block "b" .s}}[{{.}}]{{end}}{{executeTemplate "b" 1 | print}}"#,
            Out("[hello][1]"),
        ),
        (
            r#"{{define "greet"}}hello {{.}}{{end}}{{executeTemplate "greet" 1 2}}"#,
            Exec("error calling executeTemplate: executeTemplate: wrong number of arguments, expected 1 or 2, but got 3"),
        ),
        (
            r#"{{executeTemplate "nope"}}"#,
            Exec(r#"error calling executeTemplate: template: no template "nope" associated with template "t""#),
        ),
        (
            r#"{{executeTemplate}}"#,
            Exec("wrong number of args for executeTemplate: want at least 1 got 0"),
        ),
        (r#"{{executeTemplate 1}}"#, Exec("expected string; found 1")),
        (
            r#"{{define "e"}}{{slice 1}}{{end}}a{{executeTemplate "e"}}b"#,
            Exec("error calling slice: can't slice item of type int"),
        ),
    ]);
}

#[test]
fn execute_template_is_off_by_default() {
    let mut t = Template::default();
    let err = t
        .parse(r#"{{define "x"}}{{end}}{{executeTemplate "x"}}"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("function executeTemplate not defined"),
        "{}",
        err
    );
}

/// Runs `f` on a thread with a small stack, as a check that bounded
/// recursion stays far from the stack's end.
fn on_small_stack<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn host_limits() -> Limits {
    Limits {
        max_template_depth: 64,
        max_syntax_nesting: 100,
        max_steps: 2_000_000,
        max_value_bytes: 16 << 20,
        deadline: None,
    }
}

fn exec_error(limits: Limits, text: &str) -> ExecError {
    let mut t = template(limits);
    t.parse(text).unwrap();
    t.render(&Context::from(data())).unwrap_err()
}

/// In Go, a template that executes itself overflows the stack (a fatal
/// error); here it is charged as `{{template}}` is and stops at the depth.
#[test]
fn recursive_execute_template_stops_at_the_depth_limit() {
    on_small_stack(|| {
        for text in [
            r#"{{define "r"}}{{executeTemplate "r" .}}{{end}}{{executeTemplate "r" 1}}"#,
            r#"{{executeTemplate "t"}}"#,
            // Through {{template}} and back: one depth for both.
            r#"{{define "a"}}{{template "b" .}}{{end}}{{define "b"}}{{executeTemplate "a" .}}{{end}}{{template "a"}}"#,
            r#"{{define "r"}}{{range .}}{{executeTemplate "r" $}}{{end}}{{end}}{{executeTemplate "r" .list}}"#,
        ] {
            match exec_error(host_limits(), text) {
                ExecError::TemplateDepth(64) => {}
                e => panic!("{}: {:?}", text, e),
            }
        }
    });
}

#[test]
fn recursive_execute_template_stops_at_the_step_limit() {
    on_small_stack(|| {
        let limits = Limits {
            max_steps: 5_000,
            ..host_limits()
        };
        let twenty = Value::Array((0..20).map(Value::from).collect());
        // Exponential but shallow (20 levels): each level executes the
        // next twice, on a list one shorter.
        let text = r#"{{define "r"}}{{if .}}{{executeTemplate "r" (slice . 1)}}{{executeTemplate "r" (slice . 1)}}{{end}}{{end}}{{executeTemplate "r" .}}"#;
        let mut t = template(limits);
        t.parse(text).unwrap();
        match t.render(&Context::from(twenty.clone())).unwrap_err() {
            ExecError::TooManySteps(5_000) => {}
            e => panic!("{:?}", e),
        }
        // Factorial, through a range.
        let text = r#"{{define "r"}}{{range .}}{{executeTemplate "r" (slice $ 1)}}{{end}}{{end}}{{executeTemplate "r" .}}"#;
        let mut t = template(limits);
        t.parse(text).unwrap();
        match t.render(&Context::from(twenty)).unwrap_err() {
            ExecError::TooManySteps(5_000) => {}
            e => panic!("{:?}", e),
        }
    });
}

#[test]
fn execute_template_output_is_bounded_as_a_value() {
    let limits = Limits {
        max_value_bytes: 1000,
        ..host_limits()
    };
    let text = r#"{{define "big"}}{{range .}}0123456789{{end}}{{end}}{{executeTemplate "big" .list | len}}"#;
    let mut t = template(limits);
    t.parse(text).unwrap();
    assert_eq!(t.render(&Context::from(data())).unwrap(), "40");
    // Stops at the limit while writing, not after building the output.
    let mut items = vec![];
    for _ in 0..200 {
        items.push(Value::from("x"));
    }
    let mut t = template(limits);
    t.parse(r#"{{define "big"}}{{range .}}0123456789{{end}}{{end}}{{executeTemplate "big" .}}"#)
        .unwrap();
    match t.render(&Context::from(Value::Array(items))).unwrap_err() {
        ExecError::ValueTooLarge {
            function,
            size,
            max: 1000,
        } => {
            assert_eq!(function, "executeTemplate");
            assert!(size > 1000 && size <= 1010, "{}", size);
        }
        e => panic!("{:?}", e),
    }
}

/// Each range pass and each break or continue is charged; a long loop that
/// breaks early costs only what it ran.
#[test]
fn break_and_continue_are_charged() {
    let many = Value::Array((0..100_000).map(Value::from).collect());
    let limits = Limits {
        max_steps: 50_000,
        ..host_limits()
    };
    let mut t = template(limits);
    t.parse(r#"{{range .}}{{if eq . 3}}{{break}}{{end}}{{.}}{{end}}"#)
        .unwrap();
    assert_eq!(t.render(&Context::from(many.clone())).unwrap(), "012");
    let mut t = template(limits);
    t.parse(r#"{{range .}}{{continue}}{{end}}"#).unwrap();
    match t.render(&Context::from(many)).unwrap_err() {
        ExecError::TooManySteps(50_000) => {}
        e => panic!("{:?}", e),
    }
}

/// Hostile texts around the new syntax fail cleanly, never panic.
#[test]
fn hostile_texts_do_not_panic() {
    let texts = [
        "{{=}}",
        "{{= 1}}",
        "{{$ =}}",
        "{{$x := 1}}{{$x =}}",
        "{{$x := 1}}{{$x = = 2}}",
        "{{$x := 1}}{{$x := = 2}}",
        "{{$x := 1}}{{($x = 2) = 3}}",
        "{{$x := 1}}{{(($x = ($x = 2)))}}",
        "{{range $i, $v, $w := .list}}{{end}}",
        "{{range $i, $v = .list}}{{end}}",
        "{{range $i, = .list}}{{end}}",
        "{{range $i , $v:= .list}}{{$i}}{{end}}",
        "{{break}}{{end}}",
        "{{end}}{{break}}",
        "{{range .}}{{break}}",
        "{{range .}}{{break",
        "{{range .}}{{break}}}}{{end}}",
        "{{range .}}{{(break)}}{{end}}",
        "{{range .}}{{print break}}{{end}}",
        "{{range .}}{{break | print}}{{end}}",
        "{{range .}}{{$x := break}}{{end}}",
        "{{define \"break\"}}{{break}}{{end}}",
        "{{template \"break\"}}",
        "{{executeTemplate (executeTemplate \"t\")}}",
        "{{executeTemplate \"\"}}",
        "{{executeTemplate nil}}",
        "{{executeTemplate . . .}}",
        "{{slice . 0 0 0 0 0 0 0 0 0 0 0}}",
        "{{slice .list 0 0 -0}}",
        "{{slice (slice (slice .s 1) 1) 1}}",
        "{{html (js (urlquery .js .html .list .m))}}",
        "{{js (slice .u 1 2)}}",
    ];
    on_small_stack(move || {
        for text in texts {
            let mut t = template(host_limits());
            if t.parse(text).is_ok() {
                let _ = t.render(&Context::from(data()));
            }
        }
    });
}

/// An assignment, as a declaration, prints nothing.
#[test]
fn assignment_does_not_print() {
    check(&[(r#"{{$x := 1}}{{$x = 2}}x"#, Out("x"))]);
}

/// The lexer went back one byte after reading a rune, whatever its width:
/// a text ending in a space inside an action looped forever, and a
/// multi-byte rune where it backed up (or before a trim marker) panicked
/// its thread. Trim markers remove Go's four space characters only.
#[test]
fn lexer_regressions() {
    check(&[
        (
            "€{{- 1}}|x \u{a0}{{- 1}}|{{1 -}} \u{a0}x|a \t\n{{- 2 -}}\n\t b",
            Out("€1|x \u{a0}1|1\u{a0}x|a2b"),
        ),
        (r#"{{ print "a" "#, Parse("unclosed action")),
        ("x{{- len ", Parse("unclosed action")),
        ("{{a€}}", Parse("bad character €")),
        (r#"{{"é"}}{{$é := 1}}{{ $é }}{{.m.x}}"#, Out("é11")),
    ]);
}

/// Random soups of template tokens (the new syntax among them) parse and
/// render to a result or an error: no panic, here or in the lexer's
/// thread (which the parser would see as a closed channel), and no hang.
#[test]
fn token_soup_never_panics() {
    let tokens = [
        "{{",
        "}}",
        " ",
        "range",
        "if",
        "with",
        "else",
        "end",
        "break",
        "continue",
        "$x",
        "$y",
        "$",
        ":=",
        "=",
        ",",
        ".",
        ".list",
        ".m",
        "(",
        ")",
        "|",
        "1",
        "-1",
        "\"a\"",
        "slice",
        "html",
        "js",
        "urlquery",
        "executeTemplate",
        "define",
        "block",
        "template",
        "\"r\"",
        "print",
        "nil",
        "9223372036854775807",
        "index",
        "len",
        "{{end}}",
        "{{break}}",
        "{{continue}}",
        "{{range .list}}",
        "{{$x := 1}}",
        "{{$x = 2}}",
        "{{define \"r\"}}",
        "{{executeTemplate \"r\" .}}",
        "x",
        "{{- ",
        " -}}",
        "é",
        "€",
        "\n",
        "`",
        "\\",
        "/*",
        "*/",
        "'",
        "0x",
        "1.5e",
    ];
    let mut seed: u64 = 0x1234_5678;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let mut texts = vec![];
    for _ in 0..3000 {
        let len = 1 + next() % 24;
        texts.push(
            (0..len)
                .map(|_| tokens[next() % tokens.len()])
                .collect::<String>(),
        );
    }
    on_small_stack(move || {
        let limits = Limits {
            max_template_depth: 20,
            max_syntax_nesting: 50,
            max_steps: 20_000,
            max_value_bytes: 100_000,
            deadline: None,
        };
        for text in texts {
            let mut t = template(limits);
            match t.parse(text.as_str()) {
                Ok(()) => {
                    let _ = t.render(&Context::from(data()));
                }
                Err(e) => assert!(!e.to_string().contains("closed channel"), "{:?}", text),
            }
        }
    });
}

/// Nested `executeTemplate` calls buffer their outputs at once; together
/// they hold no more than `max_value_bytes`, whatever the depth (each alone
/// bounded, 64 levels could hold 64 times the limit).
#[test]
fn nested_execute_template_buffers_share_the_value_limit() {
    let limits = Limits {
        max_value_bytes: 1000,
        ..host_limits()
    };
    let level = list(&["x"; 60]);
    // "r" writes 600 bytes, then executes "s", which writes 600 more.
    let mut t2 = template(limits);
    t2.parse(
        r#"{{define "blob"}}{{range .}}0123456789{{end}}{{end}}{{define "r"}}{{template "blob" .}}{{executeTemplate "s" .}}{{end}}{{define "s"}}{{template "blob" .}}{{end}}{{executeTemplate "r" .}}"#,
    )
    .unwrap();
    // One level of 600 bytes fits; two nested (600 held + 600) do not.
    let mut one = template(limits);
    one.parse(
        r#"{{define "blob"}}{{range .}}0123456789{{end}}{{end}}{{executeTemplate "blob" .}}"#,
    )
    .unwrap();
    assert_eq!(
        one.render(&Context::from(level.clone())).unwrap().len(),
        600
    );
    match t2.render(&Context::from(level.clone())).unwrap_err() {
        ExecError::ValueTooLarge {
            function,
            max: 1000,
            ..
        } => assert_eq!(function, "executeTemplate"),
        e => panic!("{:?}", e),
    }
    // After a call returns, its bytes are no longer held: two calls in a
    // row each fit.
    let mut seq = template(limits);
    seq.parse(r#"{{define "blob"}}{{range .}}0123456789{{end}}{{end}}{{executeTemplate "blob" . | len}} {{executeTemplate "blob" . | len}} {{executeTemplate "blob" . | len}}"#)
        .unwrap();
    assert_eq!(seq.render(&Context::from(level)).unwrap(), "600 600 600");
}
