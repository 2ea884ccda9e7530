//! Configuration errors: each names the file, the line and column when TOML gives one,
//! and the key path (`upstream.api.backends[1].weight`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column of the offending value, when known.
    pub location: Option<(usize, usize)>,
    /// The key path, empty for errors about the file as a whole.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        file: &Path,
        src: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            location: span.map(|s| line_col(src, s.start)),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}` {}", self.key, self.message)
        }
    }
}

/// Every error found in one file; validation reports them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        let x = src.find("\"x\"").unwrap();
        assert_eq!(line_col(src, x), (2, 6));
    }

    #[test]
    fn display_names_file_position_and_key() {
        let e = ConfigError::new(
            Path::new("f.toml"),
            "x\ny = 2",
            Some(2..3),
            "global.workers",
            "must be at least 0, got -1",
        );
        assert_eq!(
            e.to_string(),
            "f.toml:2:1: `global.workers` must be at least 0, got -1"
        );
    }
}
