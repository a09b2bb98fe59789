//! The `dr` binary: parse arguments, set up logging, run the command, map the result to an
//! exit code.

#![forbid(unsafe_code)]

use clap::Parser;

/// jemalloc, configured in `.cargo/config.toml`: memory freed by a long job goes back to the
/// OS, and few arenas keep a many-threaded job's peak near its heap (README, "Scale").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args = dr::cli::Args::parse();
    dr::cli::init_logging(&args);
    let code = match dr::cli::run(args) {
        Ok(code) => code,
        Err(err) if dr::cli::is_closed_pipe(&err) => dr::cli::CLOSED_PIPE,
        Err(err) => {
            eprintln!("dr: {err:#}");
            for hint in dr::cli::hints(&err) {
                eprintln!("hint: {hint}");
            }
            dr::cli::exit_code(&err)
        }
    };
    // `exit` skips destructors: flush what was printed first.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(code);
}
