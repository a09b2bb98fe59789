//! Facts about the machine dr runs on (for reports, audit events and lease holders), and how
//! dr hands restored data and processes to another OS user on it.

/// The host name (kernel's, else `/etc/hostname`), `None` when neither can be read.
pub fn name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// This process's uids from `/proc/self/status`: (real, effective).
fn uids() -> Option<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut ids = line.split_whitespace().skip(1).map(|u| u.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// Whether dr runs as root (its effective uid is 0).
pub fn is_root() -> bool {
    uids().is_some_and(|(_, effective)| effective == 0)
}

/// The user running this process, by its real uid: its name in the local user database
/// (`root`), else `uid N`. Not `$USER`, which the caller sets.
pub fn user_name() -> String {
    let Some((uid, _)) = uids() else {
        return "uid ?".to_owned();
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2).and_then(|id| id.parse().ok()) == Some(uid))
        .and_then(|f| f.first().map(|n| (*n).to_owned()))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// An OS user as `/etc/passwd` and `/etc/group` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Every group it is in (primary and supplementary).
    pub groups: Vec<u32>,
}

impl User {
    /// Looks `name` up in the local user database.
    pub fn lookup(name: &str) -> Option<Self> {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Self::from_files(name, &passwd, &group)
    }

    fn from_files(name: &str, passwd: &str, group: &str) -> Option<Self> {
        let f: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))?;
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        let mut groups = vec![gid];
        for g in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            let members = g.get(3).copied().unwrap_or_default();
            if members.split(',').any(|m| m == name)
                && let Some(id) = g.get(2).and_then(|i| i.parse().ok())
            {
                groups.push(id);
            }
        }
        Some(Self {
            name: name.to_owned(),
            uid,
            gid,
            groups,
        })
    }

    /// Whether this user may read a file with `meta`'s owner and mode (root reads anything).
    pub fn can_read(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        self.uid == 0
            || if meta.uid() == self.uid {
                mode & 0o400 != 0
            } else if self.groups.contains(&meta.gid()) {
                mode & 0o040 != 0
            } else {
                mode & 0o004 != 0
            }
    }
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

/// Gives `p` and everything below it (not following links) to `uid:gid`.
pub fn chown_tree(p: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(p)?.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Environment variables a server started from restored data (and its tools) may see: none
/// of dr's own, which can hold storage or database credentials.
const SERVER_ENV: &[&str] = &["PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ"];

/// `cmd` with only [`SERVER_ENV`] of dr's environment.
pub fn clean_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    cmd.env_clear();
    for k in SERVER_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_their_groups() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:104:109::/var/lib/postgresql:/bin/bash\n";
        let group =
            "root:x:0:\nssl-cert:x:108:postgres,other\npostgres:x:109:\ndr:x:200:otherpostgres\n";
        let u = User::from_files("postgres", passwd, group).unwrap();
        assert_eq!((u.uid, u.gid), (104, 109));
        assert_eq!(u.groups, vec![109, 108]);
        assert!(User::from_files("nobody", passwd, group).is_none());
    }
}
