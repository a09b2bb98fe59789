//! PostgreSQL from Debian's `postgresql` package: `initdb` in a temp dir, a free port,
//! `wal_level = replica`, archiving through the built `dr wal-push`. When the tests run as
//! root, every server process runs as the unprivileged `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Server, find_bin, free_port, wait_until};

/// The PostgreSQL binaries directory.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DR_TEST_PG_BIN_DIR") {
        return PathBuf::from(d);
    }
    // Debian's versioned directory first: it holds the server and client tools together.
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").is_file() && debian.join("psql").is_file() {
        return debian;
    }
    let initdb = find_bin(
        "initdb",
        "DR_TEST_PG_BIN_DIR",
        &[],
        "install PostgreSQL 15 with `apt-get install -y postgresql`",
    );
    initdb.parent().unwrap().to_path_buf()
}

/// True when this process is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// A command run as the `postgres` OS user when we are root.
pub fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `program` with `args` as the `postgres` OS user; panics with its stderr, named `what`,
/// unless it succeeds.
fn run_as_postgres(program: &Path, args: &[&str], what: &str) {
    let out = as_postgres(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A temp dir traversable by the `postgres` user with an empty `data` directory it owns.
fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    give_to_postgres(&data);
    (dir, data)
}

/// Gives a dr setup to the `postgres` user as a database host's archiver needs it (the
/// repository, dr.toml, the chunk-id key), keeping the restore identity and the drill signing
/// key root's, as on a host that restores or drills: the servers dr starts on restored data
/// run as `postgres` and must not be able to read them (no-op unless root).
pub fn give_setup_to_postgres(setup: &Path) {
    give_to_postgres(setup);
    if is_root() {
        for key in ["keys/restore.key", "keys/drill-signing.key"] {
            std::os::unix::fs::chown(setup.join(key), Some(0), Some(0)).unwrap();
        }
    }
}

/// The `postgres` OS user's uid.
pub fn postgres_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd
        .lines()
        .find_map(|l| l.strip_prefix("postgres:")?.split(':').nth(1)?.parse().ok())
        .expect("a postgres user")
}

/// Gives a tree to the `postgres` user (no-op unless root).
pub fn give_to_postgres(p: &Path) {
    if is_root() {
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(p)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// One running cluster.
pub struct Postgres {
    pub port: u16,
    pub data: PathBuf,
    pub bin: PathBuf,
    server: Server,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// `initdb` + start, with `archive_command` set when given.
    pub fn start(archive_command: Option<&str>) -> Self {
        Self::start_with(&bin_dir(), archive_command)
    }

    /// The same with the server binaries of `bin` (another major version).
    pub fn start_with(bin: &Path, archive_command: Option<&str>) -> Self {
        let bin = bin.to_path_buf();
        let (dir, data) = data_dir();
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--data-checksums",
            ],
            "initdb",
        );
        let port = free_port();
        let mut conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 4\nfsync = off\nsynchronous_commit = off\nfull_page_writes = on\nshared_buffers = 64MB\nlog_min_messages = warning\n",
            data.display()
        );
        if let Some(cmd) = archive_command {
            conf.push_str(&format!(
                "archive_mode = on\narchive_command = '{}'\n",
                cmd.replace('\'', "''")
            ));
        }
        let mut f = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        f.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), f).unwrap();
        let log = dir.path().join("postgres.log");
        let server = spawn(&bin, &data, &log);
        let pg = Self {
            port,
            data,
            bin,
            server,
            _dir: dir,
        };
        pg.wait_ready();
        pg
    }

    fn wait_ready(&self) {
        let t0 = std::time::Instant::now();
        while let Err(e) = self.try_psql("select 1") {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "postgres did not accept connections: {e}\n{}",
                self.server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A streaming standby of this server (`pg_basebackup -R`), on its own port.
    pub fn standby(&self) -> Self {
        let (dir, data) = data_dir();
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        run_as_postgres(
            &self.bin.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
            "pg_basebackup",
        );
        let port = free_port();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str(&format!(
            "port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n",
            data.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        let server = spawn(&self.bin, &data, &dir.path().join("postgres.log"));
        let pg = Self {
            port,
            data,
            bin: self.bin.clone(),
            server,
            _dir: dir,
        };
        pg.wait_ready();
        pg
    }

    /// Stops the server (a clean shutdown), runs `f` on the stopped cluster, starts it again.
    pub fn while_stopped(&mut self, f: impl FnOnce(&Path)) {
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            "pg_ctl stop",
        );
        self.server.stop();
        f(&self.data);
        let log = self.server.log.clone();
        self.server = spawn(&self.bin, &self.data, &log.with_extension("2.log"));
        self.wait_ready();
    }

    /// `kill -9` of the postmaster (a crash, or a host that is gone); returns once it is dead.
    pub fn kill9(&mut self) {
        let text = std::fs::read_to_string(self.data.join("postmaster.pid")).unwrap();
        let pid = text.lines().next().unwrap().trim().to_owned();
        Command::new("kill").args(["-9", &pid]).status().unwrap();
        let t0 = std::time::Instant::now();
        while Path::new("/proc").join(&pid).exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.server.stop();
    }

    /// `pg_ctl promote -w` (a standby becomes a primary on a new timeline).
    pub fn promote(&self) {
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-w", "promote"],
            "pg_ctl promote",
        );
    }

    /// libpq connection string (TCP).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql_at(&self.bin, self.port, sql)
    }

    /// Runs SQL, returns unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}\n{}", self.server.log_tail()))
    }

    /// Forces a segment switch and waits until it is archived.
    pub fn switch_and_wait_archived(&self) {
        let seg = self.psql("select pg_walfile_name(pg_switch_wal())");
        wait_until(
            &format!("archiving of {seg}"),
            Duration::from_secs(60),
            || {
                let last =
                    self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
                !last.is_empty() && last >= seg
            },
        );
    }
}

/// `postgres -D data` under the watchdog, as the `postgres` user when root.
fn spawn(bin: &Path, data: &Path, log: &Path) -> Server {
    let postgres = bin.join("postgres");
    let mut cmd: Vec<String> = if is_root() {
        vec![
            "runuser".into(),
            "-u".into(),
            "postgres".into(),
            "--".into(),
        ]
    } else {
        vec![]
    };
    cmd.extend([
        postgres.display().to_string(),
        "-D".into(),
        data.display().to_string(),
    ]);
    let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
    Server::spawn(&cmd_ref, log)
}

/// psql against 127.0.0.1:port, database `postgres`.
pub fn psql_at(bin: &Path, port: u16, sql: &str) -> Result<String, String> {
    psql_in(bin, port, "postgres", sql)
}

/// psql against database `db` on 127.0.0.1:port: `bin`'s own psql, else Debian's (the
/// server-only builds of other majors have none; psql 15 does for plain queries).
pub fn psql_in(bin: &Path, port: u16, db: &str, sql: &str) -> Result<String, String> {
    let own = bin.join("psql");
    let psql = if own.is_file() {
        own
    } else {
        bin_dir().join("psql")
    };
    let out = Command::new(psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Stops a cluster started by `dr restore --start` when dropped.
pub struct Restored {
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

impl Restored {
    pub fn new(data: PathBuf, port: u16) -> Self {
        Self::with_bin(data, port, bin_dir())
    }

    /// One started with the binaries of `bin`.
    pub fn with_bin(data: PathBuf, port: u16, bin: PathBuf) -> Self {
        Self { data, port, bin }
    }

    pub fn psql(&self, sql: &str) -> String {
        psql_at(&self.bin, self.port, sql)
            .unwrap_or_else(|e| panic!("psql on the restored cluster: {e}"))
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}
