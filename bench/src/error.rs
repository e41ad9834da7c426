//! The errors that end a run (bad input, an unreachable target, a cluster that would
//! not start). Failures of single requests are not errors here: they are counted by
//! kind in the report and the run goes on.

use std::path::PathBuf;

/// Why `skiff-bench` stopped before or instead of reporting.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag value that cannot be used; the message names the flag and the fix.
    #[error("{0}")]
    Usage(String),
    /// `--targets` could not be parsed or resolved.
    #[error("bad --targets entry `{entry}`: {reason} (expected HOST:PORT[,HOST:PORT...])")]
    BadTarget { entry: String, reason: String },
    /// A target refused or did not answer the first connection.
    #[error("cannot connect to {target}: {source} (is the server running and listening there?)")]
    Unreachable {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The `skiff` (or another server) binary is not where it was looked for.
    #[error("cannot find {what} at {}: {hint}", path.display())]
    BinaryMissing { what: &'static str, path: PathBuf, hint: String },
    /// The directory for spawned servers' data cannot be used.
    #[error("data directory {}: {reason}", path.display())]
    DataDir { path: PathBuf, reason: String },
    /// A spawned server did not start or did not become ready.
    #[error("{0}")]
    Spawn(String),
    /// Writing an output file (`--json`, `--hgrm`, `--plot`) failed.
    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The run was interrupted (SIGINT/SIGTERM) before it could start measuring.
    #[error("interrupted")]
    Interrupted,
    /// Any other I/O failure of the generator itself.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BenchError {
    /// The process exit status for this error: 2 for bad input (as clap uses), 130
    /// for an interrupt (128 + SIGINT, as shells report it), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Usage(_) | BenchError::BadTarget { .. } => 2,
            BenchError::Interrupted => 130,
            _ => 1,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io { context: context.into(), source }
    }
}
