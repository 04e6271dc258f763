//! Shared building blocks of the grant model: the error every capability's
//! validation returns.
//!
//! The grants themselves are generated from the capability list in
//! [`crate::caps`] (`GrantsSpec` as written, `Grants` validated); each
//! capability module owns its own grant type and its parsing. This module
//! imports no capability.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("invalid {flag} grant \"{value}\": {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read runner file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runner file {path} is not valid: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error(
        "--allow-{kind} {name}: no [{table}.{name}] is defined; define it in the runner file (-f FILE)"
    )]
    Undefined {
        kind: &'static str,
        table: &'static str,
        name: String,
    },
}

/// A grant that does not parse: the reason, shown after the flag and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidGrant(pub String);

impl From<String> for InvalidGrant {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for InvalidGrant {
    fn from(reason: &str) -> Self {
        Self(reason.to_string())
    }
}

impl GrantError {
    /// `flag value: reason` for a grant that does not parse.
    pub fn invalid(
        flag: &'static str,
        value: impl Into<String>,
        reason: impl std::fmt::Display,
    ) -> Self {
        GrantError::Invalid {
            flag,
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}
