//! `runner run --junit PATH`: the JUnit reports stages and hooks wrote,
//! merged into one file CI systems read (every `<testsuite>` kept as written).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("JUnit report {} is not valid XML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One stage's report, read through the stage's granted directories when
/// the stage finished (never reopened by path later).
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it was read (for messages).
    pub path: PathBuf,
    pub xml: String,
}

/// Merge `reports` into one `<testsuites>` document.
pub fn merge(reports: &[Report]) -> Result<String, JunitError> {
    let (mut tests, mut failures, mut errors) = (0u64, 0u64, 0u64);
    let mut suites = String::new();
    for Report { path, xml: text } in reports {
        let doc = roxmltree::Document::parse(text).map_err(|e| JunitError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Outermost suites only: a nested suite is inside its parent's text
        // already (and copying every level would grow with the nesting).
        let outermost = |n: &roxmltree::Node| {
            n.has_tag_name("testsuite")
                && !n.ancestors().skip(1).any(|a| a.has_tag_name("testsuite"))
        };
        for suite in doc.descendants().filter(outermost) {
            let count = |name: &str| {
                suite
                    .attribute(name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            tests = tests.saturating_add(count("tests"));
            failures = failures.saturating_add(count("failures"));
            errors = errors.saturating_add(count("errors"));
            suites.push_str("  ");
            suites.push_str(&text[suite.range()]);
            suites.push('\n');
        }
    }
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"runner\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">\n{suites}</testsuites>\n"
    ))
}

/// Merge and write atomically to `path`.
pub fn write(reports: &[Report], path: &Path) -> Result<(), JunitError> {
    let xml = merge(reports)?;
    let write_error = |source| JunitError::Write {
        path: path.into(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_error)?;
    std::io::Write::write_all(&mut tmp, xml.as_bytes()).map_err(write_error)?;
    tmp.persist(path).map_err(|e| write_error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn suites_are_merged_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let report = |name: &str, xml: &str| super::Report {
            path: dir.path().join(name),
            xml: xml.into(),
        };
        let a = report(
            "a.xml",
            r#"<?xml version="1.0"?><testsuites><testsuite name="pre" tests="2" failures="0" errors="0"><testcase name="x"/><testcase name="y"/></testsuite></testsuites>"#,
        );
        let b = report(
            "b.xml",
            r#"<testsuite name="post" tests="1" failures="1" errors="0"><testcase name="z"><failure message="no"/></testcase></testsuite>"#,
        );
        let xml = super::merge(&[a, b]).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let root = doc.root_element();
        assert_eq!(root.attribute("tests"), Some("3"));
        assert_eq!(root.attribute("failures"), Some("1"));
        let names: Vec<_> = root
            .children()
            .filter(|n| n.is_element())
            .map(|n| n.attribute("name").unwrap())
            .collect();
        assert_eq!(names, ["pre", "post"]);
    }

    #[test]
    fn nested_suites_are_copied_once_and_counts_saturate() {
        let dir = tempfile::tempdir().unwrap();
        let mut xml = String::new();
        for _ in 0..200 {
            xml.push_str(r#"<testsuite name="n" tests="18446744073709551615">"#);
        }
        xml.push_str(&"</testsuite>".repeat(200));
        let merged = super::merge(&[super::Report {
            path: dir.path().join("n.xml"),
            xml: xml.clone(),
        }])
        .unwrap();
        // The outermost suite once (nested ones inside it), not 200 copies.
        assert!(merged.len() < xml.len() + 300, "{}", merged.len());
        let doc = roxmltree::Document::parse(&merged).unwrap();
        assert_eq!(
            doc.root_element().attribute("tests"),
            Some("18446744073709551615")
        );
    }
}
