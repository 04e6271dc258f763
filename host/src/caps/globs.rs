//! Name patterns for grants (`books-ms-*`): a list of globs, default deny.

use globset::{Glob, GlobSet, GlobSetBuilder};

#[derive(Debug, Clone)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for Globs {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl Globs {
    pub fn parse(patterns: &[String]) -> Result<Self, crate::grants::InvalidGrant> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            // `*` never crosses `/`: `team-*` must not match `team-a/../victim`
            // or another registry's path. Write the `/`s of an image
            // reference out (`*/books-ms:*`), or `**/` for any depth.
            let glob = globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("pattern \"{p}\": {e}"))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| e.to_string())?;
        Ok(Self {
            patterns: patterns.to_vec(),
            set,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// A single glob, for filters a plugin passes (not grants).
pub fn glob_matcher(pattern: &str) -> Result<globset::GlobMatcher, BadPattern> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|source| BadPattern {
            pattern: pattern.to_string(),
            source,
        })
}

/// A glob that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("pattern \"{pattern}\": {source}")]
pub struct BadPattern {
    pattern: String,
    source: globset::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_and_image_references() {
        let g = Globs::parse(&["books-ms-*".into(), "localhost:5000/books-ms:*".into()]).unwrap();
        assert!(g.matches("books-ms-blue"));
        assert!(g.matches("localhost:5000/books-ms:v2"));
        assert!(!g.matches("payments-blue"));
        assert!(!Globs::default().matches("anything"));
        // `*` stops at `/`.
        let g = Globs::parse(&["x-*".into(), "*/app:*".into()]).unwrap();
        assert!(!g.matches("x-a/victim:v1"));
        assert!(!g.matches("x-a/../victim"));
        assert!(g.matches("127.0.0.1:5000/app:v1"));
        assert!(!g.matches("127.0.0.1:5000/team/app:v1"));
        assert!(Globs::parse(&["[".into()]).is_err());
    }
}
