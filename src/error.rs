//! Library errors. Every variant that concerns a file names the file, and where it applies the
//! field (key, HDU, dataset, column) inside it.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SpxError {
    #[error("{0}")]
    Config(String),

    #[error("config {source_name}: {message}")]
    ConfigKey {
        /// Where the bad value came from: a file path, `--set …`, a CLI flag or `built-in`.
        source_name: String,
        message: String,
    },

    #[error(
        "device `{device}` is not compiled into this binary: rebuild with `cargo build --release --features {feature}`"
    )]
    BackendNotCompiled {
        device: &'static str,
        feature: &'static str,
    },

    /// The OS error is part of this message and deliberately not a `source()`: error chains
    /// (`{:#}`) would print it a second time.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

impl SpxError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SpxError::Io {
            path: path.into(),
            error: source,
        }
    }

    pub fn field(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        SpxError::Field {
            path: path.into(),
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub fn file(path: impl Into<PathBuf>, message: impl ToString) -> Self {
        SpxError::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = SpxError> = std::result::Result<T, E>;
