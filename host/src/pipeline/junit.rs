//! `runner run --junit PATH`: the JUnit reports stages and hooks wrote,
//! merged into one file CI systems read (every `<testsuite>` kept as written).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("cannot read JUnit report {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JUnit report {} is not valid XML: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Merge `reports` into one `<testsuites>` document.
pub fn merge(reports: &[PathBuf]) -> Result<String, JunitError> {
    let (mut tests, mut failures, mut errors) = (0u64, 0u64, 0u64);
    let mut suites = String::new();
    for path in reports {
        let text = std::fs::read_to_string(path).map_err(|source| JunitError::Read {
            path: path.clone(),
            source,
        })?;
        let doc = roxmltree::Document::parse(&text).map_err(|e| JunitError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for suite in doc.descendants().filter(|n| n.has_tag_name("testsuite")) {
            let count = |name: &str| {
                suite
                    .attribute(name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            tests += count("tests");
            failures += count("failures");
            errors += count("errors");
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
pub fn write(reports: &[PathBuf], path: &Path) -> Result<(), JunitError> {
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
        let a = dir.path().join("a.xml");
        let b = dir.path().join("b.xml");
        std::fs::write(&a, r#"<?xml version="1.0"?><testsuites><testsuite name="pre" tests="2" failures="0" errors="0"><testcase name="x"/><testcase name="y"/></testsuite></testsuites>"#).unwrap();
        std::fs::write(&b, r#"<testsuite name="post" tests="1" failures="1" errors="0"><testcase name="z"><failure message="no"/></testcase></testsuite>"#).unwrap();
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
}
