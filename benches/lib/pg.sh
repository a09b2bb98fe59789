# Shared by the PostgreSQL benchmarks (sourced): helpers, a dr repository with policy `pg`
# for the cluster at $work/data, pgBackRest's stanza `bench`, and the cluster's settings.
# Needs $bin (PostgreSQL's bin dir), $work, $DR and $port set by the caller.

pgu() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# dr's repository in $work/dr and policy `pg` (local mode) for the cluster.
dr_pg_init() {
  $DR init --dir "$work/dr" > /dev/null
  printf 'host=127.0.0.1 port=%s user=postgres dbname=postgres' "$port" > "$work/dr/pg.conninfo"; chmod 600 "$work/dr/pg.conninfo"
  printf 'source = { type = "postgres", conninfo_file = "pg.conninfo", data_dir = "%s", mode = "local" }\ntargets = ["local"]\n' "$work/data" > "$work/dr/policies/pg.toml"
}

# $work/pgbr/pgbackrest.conf: zst level 3, 2 processes, a posix repository; extra [global]
# lines as arguments.
pgbr_conf() {
  mkdir -p "$work/pgbr/repo" "$work/pgbr/log"
  {
    printf '[global]\nrepo1-path=%s\ncompress-type=zst\ncompress-level=3\nprocess-max=2\nlog-path=%s\nlock-path=%s\nstart-fast=y\n' \
      "$work/pgbr/repo" "$work/pgbr/log" "$work/pgbr"
    for l in "$@"; do printf '%s\n' "$l"; done
    printf '[bench]\npg1-path=%s\npg1-port=%s\npg1-socket-path=%s\n' "$work/data" "$port" "$work/data"
  } > "$work/pgbr/pgbackrest.conf"
}

# Appends the cluster's settings: listening on 127.0.0.1:$port, archiving with ARCHIVE_COMMAND,
# max_wal_size MAX_WAL.
pg_conf() {
  cat >> "$work/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work/data'
wal_level = replica
archive_mode = on
archive_command = '$1'
max_wal_size = $2
CONF
}
