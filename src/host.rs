//! Facts about the machine dr runs on, for reports, audit events and lease holders.

/// The host name (kernel's, else `/etc/hostname`), `None` when neither can be read.
pub fn name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Raises the soft limit on open files to the hard limit and returns the new `(soft, hard)`.
///
/// The API holds one descriptor per connection (up to `api.max_connections`, plus the ones it
/// is closing), and backups, restores and drills hold files and sockets of their own; the
/// usual soft limit of 1024 is the first thing a connection flood would exhaust. Raising the
/// soft limit needs no privilege.
///
/// # Errors
/// The kernel refused the new limit (the old one stays).
pub fn raise_open_files_limit() -> std::io::Result<(Option<u64>, Option<u64>)> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    // No hard limit ("unlimited"): the kernel still caps descriptors at fs.nr_open.
    let hard = old.maximum.or_else(|| {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    if let (Some(soft), Some(hard)) = (old.current, hard)
        && soft < hard
    {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: old.maximum,
            },
        )?;
    }
    let now = getrlimit(Resource::Nofile);
    Ok((now.current, now.maximum))
}
