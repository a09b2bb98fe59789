//! Exit codes and how an error maps to one.

use crate::config::ConfigErrors;

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

/// The exit code for an error that reached `main`.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<ConfigErrors>().is_some() || err.downcast_ref::<UsageError>().is_some() {
        USAGE
    } else {
        FAILED
    }
}
