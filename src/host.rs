//! Facts about the machine dr runs on, for reports, audit events and lease holders.

/// The host name (kernel's, else `/etc/hostname`), `None` when neither can be read.
pub fn name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}
