//! Exit codes and how an error maps to one.

/// Success.
pub const OK: i32 = 0;
/// The job ran and failed (backup, restore, verify found problems).
pub const FAILED: i32 = 1;
/// Usage or configuration error.
pub const USAGE: i32 = 2;
/// Some policies failed, others succeeded.
pub const PARTIAL: i32 = 3;

/// A command-line usage problem the parser cannot see (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Whether an error is the user's to fix (exit 2) or a failure of the job (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Usage or configuration: fix the command or the config.
    Usage,
    /// The job ran and failed.
    Failure,
}
