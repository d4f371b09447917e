//! Errors from loading a config file, each naming the file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the expected shape
    /// (unknown key, wrong type, missing key).
    #[error("{at}: {}{message}", key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Parse {
        /// Where in the file.
        at: Location,
        /// The dotted key at that place, when there is one.
        key: Option<String>,
        /// What the TOML parser said is wrong.
        message: String,
    },
    /// The file parses but a value is wrong (a missing plugin file, a bad
    /// glob, an unset environment variable, ...).
    #[error("{at}: {key}: {message}")]
    Invalid {
        /// Where the value is, or just the file when the key is absent.
        at: Location,
        /// The dotted key path, e.g. `handlers.payment.plugin`.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// A place in a config file: `path:line:column`, or just `path` when the key
/// is not present in the file (a missing key, a default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// 1-based line and column.
    pub line_col: Option<(usize, usize)>,
}

impl Location {
    /// The location of byte `offset` of `source`.
    pub fn at(path: &Path, source: &str, offset: Option<usize>) -> Location {
        Location { path: path.to_owned(), line_col: offset.map(|o| line_col(source, o)) }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

impl ConfigError {
    /// A TOML or shape error at byte range `span` of `source`.
    pub(crate) fn parse(path: &Path, source: &str, span: Option<std::ops::Range<usize>>, message: &str) -> ConfigError {
        let offset = span.map(|s| s.start);
        ConfigError::Parse {
            at: Location::at(path, source, offset),
            key: offset.and_then(|o| super::locate::key_at(source, o)),
            message: message.trim().to_owned(),
        }
    }

    /// The location the error points at, if it has one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { at, .. } | ConfigError::Invalid { at, .. } => Some(at),
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
    }
}
