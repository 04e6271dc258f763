//! Request paths resolved as Consul's Go HTTP server resolves them.

/// Where a request path leads in Consul's HTTP server.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Served: the handler sees this (percent-decoded) path.
    Path(String),
    /// Answered with 301 to this clean path before any handler runs.
    Redirect(String),
    /// Go's URL parser rejects the escape (`%zz`): 400.
    BadEscape,
}

/// Resolve a raw request path as Go's `net/http` does in front of Consul's
/// handlers: `url.ParseRequestURI` decodes it into `URL.Path`, then
/// `ServeMux` redirects when `cleanPath(URL.Path)` differs. (That is Go up
/// to 1.21, and later Go with `GODEBUG=httpmuxgo121=1`; the mux of Go 1.22+
/// cleans the still-escaped path, so there `%2e%2e` and `%2f` reach the
/// handler decoded but unresolved: the key `a/../b` itself. Either way a
/// key holding `..` never means what it says.)
pub fn resolve(raw_path: &str) -> Resolved {
    let Some(path) = percent_decode(raw_path) else {
        return Resolved::BadEscape;
    };
    let clean = clean_path(&path);
    if clean == path {
        Resolved::Path(path)
    } else {
        Resolved::Redirect(clean)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `net/http.cleanPath`: `path.Clean` of the rooted path, keeping a
/// trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".into();
    }
    let rooted = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("/{p}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in rooted.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut clean = format!("/{}", parts.join("/"));
    if rooted.ends_with('/') && clean != "/" {
        clean.push('/');
    }
    clean
}

/// Go's `url.URL{Path: p}.EscapedPath()`: what a redirect's Location holds.
pub(super) fn escape_path(p: &str) -> String {
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+,/:;=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
