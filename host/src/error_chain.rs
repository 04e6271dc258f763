//! One error's text with its causes: `a: b: c`.
//!
//! Client crates (bollard, reqwest, oci-client) print only their own layer
//! ("error trying to connect"); the cause a user can act on (a refused
//! certificate, a refused connection) is a source further down.

/// `e` and each of its sources, joined by `: `; a cause whose text the
/// text so far already holds is left out (some errors repeat their source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let io = || std::io::Error::other("certificate unknown");
        assert_eq!(error_chain(&Outer(io())), "outer: certificate unknown");
        assert_eq!(error_chain(&Repeats(io())), "outer: certificate unknown");
    }
}
