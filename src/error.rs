//! Exit codes, the kind (usage or failure) typed errors report, and [`chain`] for writing an
//! error with its causes. `cli::exit_code` maps an error to its code.

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

/// What every typed error of a job tells `main`: its [`ErrorKind`] (the exit code) and what
/// to do about it. `cli` walks an error's chain through it for the exit code and `hint:` lines.
pub trait Classify {
    /// Usage (exit 2) or a failure (exit 1).
    fn kind(&self) -> ErrorKind;

    /// What to do about it, printed as a `hint:` line.
    fn hint(&self) -> Option<&str> {
        None
    }
}

impl Classify for UsageError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Usage
    }
}

/// An error followed by its causes, `: ` between them (what `{:#}` prints for an
/// `anyhow::Error`): typed errors keep their causes in `source()`, not in their message.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A wrapper whose message already ends with its cause's says nothing new.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("opening the repository")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(super::chain(&e), "opening the repository: disk on fire");
    }
}
