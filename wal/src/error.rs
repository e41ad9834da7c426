//! The WAL's error type: I/O failures, corruption, operator mistakes and the fail-stop
//! state are different variants because the node reacts to each differently.

use std::path::PathBuf;

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operation on the file system failed. During appends this is fatal: the WAL
    /// enters the stopped state and every later call returns [`WalError::Stopped`].
    #[error("WAL I/O error: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Bytes on disk that cannot be the result of a crash: a checksum mismatch before
    /// the tail of the last segment, a missing segment, a sequence gap. The node must
    /// not start; an operator restores the shard from a peer or a backup.
    #[error(
        "WAL corruption in {file} at offset {offset}: {reason}; refusing to start rather \
         than silently dropping data. Restore this shard's data directory from a replica \
         (remove it and let the node rejoin), or from a backup"
    )]
    Corruption { file: PathBuf, offset: u64, reason: String },

    /// The data directory cannot be used as it is; `reason` tells the operator what to do.
    #[error("WAL data directory {dir} is unusable: {reason}")]
    BadDataDir { dir: PathBuf, reason: String },

    /// A caller broke the append contract (too large a batch, entries that are not
    /// contiguous). Nothing was written; the WAL keeps working.
    #[error("invalid append: {0}")]
    InvalidAppend(String),

    /// An earlier write or fdatasync failed; the WAL stopped and reports no further
    /// durability (fail-stop: a failed fsync may have dropped dirty pages, so retrying
    /// and acknowledging would lose data silently).
    #[error("WAL stopped after a failure: {reason}")]
    Stopped { reason: String },
}

impl WalError {
    /// True for errors that stop the WAL for good.
    pub fn is_fatal(&self) -> bool {
        matches!(self, WalError::Io { .. } | WalError::Stopped { .. } | WalError::Corruption { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corruption_message_names_file_offset_and_what_to_do() {
        let e = WalError::Corruption {
            file: PathBuf::from("/data/wal/00000000000000000003.wal"),
            offset: 8192,
            reason: "batch checksum mismatch".into(),
        };
        let s = e.to_string();
        assert!(s.contains("00000000000000000003.wal") && s.contains("8192"), "{s}");
        assert!(s.contains("refusing to start"), "{s}");
        assert!(e.is_fatal());
        assert!(!WalError::InvalidAppend("x".into()).is_fatal());
    }
}
