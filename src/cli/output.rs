//! Progress bars (when stderr is a terminal, log lines otherwise) and human summaries.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::units::format_bytes;
use crate::pipeline::progress::Progress;

/// A progress display that updates itself until dropped.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// Starts a bar for `progress` when stderr is a terminal; `verb` leads the line.
    pub(crate) fn start(verb: &'static str, progress: Arc<Progress>) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self {
                bar: None,
                task: Some(tokio::spawn(log_lines(verb, progress))),
            };
        }
        let bar = ProgressBar::new(0);
        let task = tokio::spawn({
            let bar = bar.clone();
            async move {
                loop {
                    let total = Progress::get(&progress.total);
                    let bytes = Progress::get(&progress.bytes);
                    if total > 0 {
                        bar.set_style(ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").expect("valid template").progress_chars("=> "));
                        bar.set_length(total);
                    } else {
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{spinner} {prefix} {bytes} {bytes_per_sec} {msg}",
                            )
                            .expect("valid template"),
                        );
                    }
                    bar.set_prefix(verb);
                    bar.set_position(bytes);
                    bar.set_message(format!(
                        "{} items, {} transferred",
                        Progress::get(&progress.items),
                        format_bytes(Progress::get(&progress.transferred))
                    ));
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        });
        Self {
            bar: Some(bar),
            task: Some(task),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// Without a terminal (CI, systemd, Kubernetes): a progress line every 10 s
/// (`DR_PROGRESS_INTERVAL_MS` overrides), through the log, so `--log-format json` makes its
/// fields JSON: bytes, total and percent when known, rate, ETA, items, transferred. Logged at
/// `info` under the target `dr::progress`, which the default `warn` level lets through.
async fn log_lines(verb: &'static str, progress: Arc<Progress>) {
    let every = std::env::var("DR_PROGRESS_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis);
    // The rate counts from when bytes started to move (a restore checks and locates
    // everything first), taken as the tick before the first one that saw any.
    let mut start = None;
    loop {
        tokio::time::sleep(every).await;
        if start.is_none() && Progress::get(&progress.bytes) > 0 {
            start = std::time::Instant::now().checked_sub(every);
        }
        let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
        let v = progress.view(elapsed);
        tracing::info!(
            target: "dr::progress",
            job = verb,
            bytes = v.bytes,
            total = v.total,
            percent = v.percent,
            bytes_per_second = v.bytes_per_second,
            eta_seconds = v.eta_seconds,
            items = v.items,
            transferred = v.transferred,
            "{verb}: {}",
            describe(&v),
        );
    }
}

/// `1.2 GiB of 2.7 GiB (45.0 %) at 80.0 MiB/s, 20 s left`.
pub(crate) fn describe(v: &crate::pipeline::progress::ProgressView) -> String {
    format!(
        "{}{} at {}/s{}",
        format_bytes(v.bytes),
        v.total
            .map(|t| format!(
                " of {} ({:.1} %)",
                format_bytes(t),
                v.percent.unwrap_or(0.0)
            ))
            .unwrap_or_default(),
        format_bytes(v.bytes_per_second),
        v.eta_seconds
            .map(|s| format!(", {s} s left"))
            .unwrap_or_default(),
    )
}

/// `123.4 MiB/s`.
pub(crate) fn rate(bytes: u64, secs: f64) -> String {
    if secs <= 0.0 {
        return "-".to_owned();
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let per = (bytes as f64 / secs) as u64;
    format!("{}/s", format_bytes(per))
}

/// Peak resident memory of this process, from /proc (Linux).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The exit code of a command whose stdout was closed by its reader: 128 + SIGPIPE, what a
/// shell reports for a Unix tool the signal ended.
pub const CLOSED_PIPE: i32 = 141;

/// Writes to stdout (what [`outln!`] and [`out!`] expand to). Rust ignores SIGPIPE, so a
/// reader that went away (`dr snapshots | head`) shows up as a write error: the process then
/// ends at once with [`CLOSED_PIPE`] and prints nothing, as `ls | head` does. Any other write
/// error (a full disk behind a redirect) is reported and ends it with 1.
pub(crate) fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE);
        }
        eprintln!("dr: writing to stdout: {e}");
        std::process::exit(crate::error::FAILED);
    }
}
