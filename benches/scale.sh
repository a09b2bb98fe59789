#!/usr/bin/env bash
# Benchmark: memory and time at scale (issue 16). Peak RSS of dr's backup, second backup,
# restore and `verify --data`, and metadata bytes per snapshot, side by side in one run with
# the anchor on the same data: restic for trees of many files, pgBackRest for PostgreSQL.
# Durable restores for dr (it syncs); restic does not sync, so its restore is followed by
# `sync -f` and timed with it.
#
#   benches/scale.sh files [N [LO HI]]    N small files (default 100000) of LO-HI bytes
#                                         (default 200-4000), 500 per directory; the issue's
#                                         second case: files 1000000 0 1024
#   benches/scale.sh big [MB [SMALL_MB]]  one new incompressible file (default 4096 MiB) and
#                                         SMALL_MB files of 1 MiB (the issue's tree: 4096 6144)
#   benches/scale.sh redis [MB]           a Redis dataset of MB MiB (default 2048), RDB uncompressed
#   benches/scale.sh postgres [SCALE...]  pgbench clusters (default 20 150), pgBackRest beside
#
# Needs: restic (files), pgbackrest + PostgreSQL 15 (postgres), bc, python3; builds dr --release.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-files}; shift || true
cargo build --release --quiet
DR="${CARGO_TARGET_DIR:-$PWD/target}/release/dr"
work=$(mktemp -d "${TMPDIR:-/tmp}/dr-scale.XXXXXX"); chmod 755 "$work"
now() { date +%s.%N; }
secs() { printf '%.2f' "$(echo "$2 - $1" | bc)"; }
ratio() { printf '%.2f' "$(echo "scale=3; $1 / $2" | bc)"; }
# Runs a command and sets T (seconds) and M (peak RSS, MiB).
measure() {
  local t0 t1; t0=$(now); /usr/bin/time -f %M -o "$work/rss" "$@" > /dev/null; t1=$(now)
  T=$(secs "$t0" "$t1"); M=$(( $(tail -1 "$work/rss") / 1024 ))
}
row() { printf '| %-34s | %8s s | %6s MiB | %8s s | %6s MiB | %5s |\n' "$1" "$2" "$3" "$4" "$5" "$(ratio "$2" "$4")"; }
header() {
  printf '\n| %-34s | %10s | %10s | %10s | %10s | %5s |\n' "$1" "dr" "dr RSS" "$2" "$2 RSS" "ratio"
  printf '|%s|\n' "------------------------------------|-----------:|-----------:|-----------:|-----------:|------:"
}
solo() { printf '\n| %-34s | %10s | %10s |\n|%s|\n' "$1" "dr" "dr RSS" "------------------------------------|-----------:|-----------:"; }
solo_row() { printf '| %-34s | %8s s | %6s MiB |\n' "$1" "$2" "$3"; }
dr_setup() { # dr_setup DIR SOURCE_TOML
  $DR init --dir "$1" > /dev/null
  printf 'source = %s\ntargets = ["local"]\n' "$2" > "$1/policies/b.toml"
}
metadata() { # bytes of the newest snapshot's manifest + refs (+ $2: index bytes it added)
  local snaps; snaps=$(ls -t "$1"/repo/snapshots/b/ | head -2)
  echo $(( $(cd "$1/repo/snapshots/b" && du -cb $snaps | tail -1 | cut -f1) + ${2:-0} ))
}
index_bytes() { du -sb "$1/repo/index" 2> /dev/null | cut -f1 || echo 0; }

case "$what" in
files)
  n=${1:-100000}; lo=${2:-200}; hi=${3:-4000}; dirs=$(( n / 500 ))
  command -v restic > /dev/null || { echo "missing restic: apt-get install -y restic" >&2; exit 2; }
  echo "==> $n files of $lo-$hi bytes in $dirs directories"
  python3 - "$work/data" "$n" "$dirs" "$lo" "$hi" <<'PY'
import os, random, sys
root, n, dirs, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
random.seed(1)
for d in range(dirs):
    p = f"{root}/d{d:04}"; os.makedirs(p)
    for f in range(n // dirs):
        k = random.randint(lo, hi)
        with open(f"{p}/f{f:05}.txt", "wb") as fh: fh.write(os.urandom(k // 2).hex().encode()[:k])
PY
  find "$work/data" -type f -print0 | xargs -0 cat > /dev/null
  dr_setup "$work/dr" "{ type = \"files\", path = \"$work/data\" }"
  export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$work/restic-cache"
  restic init -q -r "$work/restic" > /dev/null
  header "$n small files" restic
  measure restic -q -r "$work/restic" backup "$work/data"; rt=$T; rm_=$M
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; row "first backup" "$T" "$M" "$rt" "$rm_"
  # 0.05 % of the files change.
  python3 - "$work/data" "$n" "$dirs" <<'PY'
import os, sys
root, n, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(max(1, n // 2000)):
    with open(f"{root}/d{i % dirs:04}/f{i // dirs:05}.txt", "ab") as fh: fh.write(b"changed\n")
PY
  measure restic -q -r "$work/restic" backup "$work/data"; rt=$T; rm_=$M
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; row "second backup, 0.05 % changed" "$T" "$M" "$rt" "$rm_"
  sync
  t0=$(now); /usr/bin/time -f %M -o "$work/rss" restic -q -r "$work/restic" restore latest --target "$work/r-restic" > /dev/null; sync -f "$work/r-restic"; t1=$(now)
  rt=$(secs "$t0" "$t1"); rm_=$(( $(tail -1 "$work/rss") / 1024 )); sync
  measure "$DR" -c "$work/dr/dr.toml" restore --policy b --target-dir "$work/r-dr"; row "restore (synced)" "$T" "$M" "$rt" "$rm_"
  diff -r "$work/data" "$work/r-dr" > /dev/null || { echo "restored tree differs!" >&2; exit 1; }
  measure restic -q -r "$work/restic" check --read-data; rt=$T; rm_=$M
  measure "$DR" -c "$work/dr/dr.toml" verify --policy b --data; row "verify --data / check --read-data" "$T" "$M" "$rt" "$rm_"
  echo; echo "dr metadata of the second snapshot (manifest + refs): $(metadata "$work/dr") bytes"
  ;;
big)
  mb=${1:-4096}; small_mb=${2:-0}
  echo "==> one new incompressible file of $mb MiB, and $small_mb files of 1 MiB"
  mkdir -p "$work/data/small"; head -c "${mb}M" /dev/urandom > "$work/data/big.bin"
  python3 - "$work/data/small" "$small_mb" <<'PY'
import os, sys
for i in range(int(sys.argv[2])):
    d = f"{sys.argv[1]}/d{i // 1000:03}"; os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i:05}.bin", "wb") as fh: fh.write(os.urandom(1 << 20))
PY
  dr_setup "$work/dr" "{ type = \"files\", path = \"$work/data\" }"
  solo "$((mb + small_mb)) MiB tree"
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; solo_row "backup" "$T" "$M"
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; solo_row "second backup (unchanged)" "$T" "$M"
  measure "$DR" -c "$work/dr/dr.toml" restore --policy b --target-dir "$work/r"; solo_row "restore" "$T" "$M"
  measure "$DR" -c "$work/dr/dr.toml" verify --policy b --data; solo_row "verify --data" "$T" "$M"
  echo; echo "dr metadata of the second snapshot (manifest + refs): $(metadata "$work/dr") bytes"
  ;;
redis)
  mb=${1:-2048}
  for t in redis-server redis-cli; do command -v $t > /dev/null || { echo "missing $t: apt-get install -y redis-server redis-tools" >&2; exit 2; }; done
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  trap 'redis-cli -p $port shutdown nosave > /dev/null 2>&1 || true' EXIT
  redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no --rdbcompression no --daemonize yes --logfile "$work/redis.log"
  sleep 0.5
  echo "==> loading $mb MiB of 1 KB values (half random text, half half-zero)"
  python3 - "$((mb * 1024))" <<'PY' | redis-cli -p "$port" --pipe > /dev/null
import os, sys, base64
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    raw = os.urandom(750)
    v = base64.b64encode(raw) if i % 2 else (raw[:500] + bytes(500))
    k = b"key:%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PY
  dr_setup "$work/dr" "{ type = \"redis\", url = \"redis://127.0.0.1:$port\" }"
  solo "Redis, $mb MiB of values"
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; solo_row "backup" "$T" "$M"
  redis-cli -p "$port" set key:1 changed > /dev/null
  measure "$DR" -c "$work/dr/dr.toml" backup --policy b; solo_row "second backup (one key changed)" "$T" "$M"
  measure "$DR" -c "$work/dr/dr.toml" restore --policy b --target-dir "$work/r"; solo_row "restore (the RDB file)" "$T" "$M"
  measure "$DR" -c "$work/dr/dr.toml" verify --policy b --data; solo_row "verify --data" "$T" "$M"
  echo; echo "RDB restored: $(( $(du -sb "$work/r" | cut -f1) / 1048576 )) MiB; dr metadata of the second snapshot: $(metadata "$work/dr") bytes"
  ;;
postgres)
  bin=/usr/lib/postgresql/15/bin
  command -v pgbackrest > /dev/null || { echo "missing pgbackrest: apt-get install -y pgbackrest" >&2; exit 2; }
  pgu() { runuser -u postgres -- "$@"; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  trap 'pgu $bin/pg_ctl -D "$work/data" -m immediate stop > /dev/null 2>&1 || true' EXIT
  $DR init --dir "$work/dr" > /dev/null
  printf 'host=127.0.0.1 port=%s user=postgres dbname=postgres' "$port" > "$work/dr/pg.conninfo"; chmod 600 "$work/dr/pg.conninfo"
  printf 'source = { type = "postgres", conninfo_file = "pg.conninfo", data_dir = "%s", mode = "local" }\ntargets = ["local"]\n' "$work/data" > "$work/dr/policies/b.toml"
  mkdir -p "$work/pgbr/repo" "$work/pgbr/log" "$work/data"
  printf '[global]\nrepo1-path=%s\ncompress-type=zst\ncompress-level=3\nprocess-max=2\nlog-path=%s\nlock-path=%s\nstart-fast=y\n[bench]\npg1-path=%s\npg1-port=%s\npg1-socket-path=%s\n' \
    "$work/pgbr/repo" "$work/pgbr/log" "$work/pgbr" "$work/data" "$port" "$work/data" > "$work/pgbr/pgbackrest.conf"
  chown -R postgres "$work/dr" "$work/pgbr" "$work/data"
  pgu $bin/initdb -D "$work/data" -U postgres --auth=trust --data-checksums --no-sync > /dev/null
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\nwal_level = replica\narchive_mode = on\narchive_command = '%s -c %s/dr/dr.toml wal-push --policy b %%p && pgbackrest --config=%s/pgbr/pgbackrest.conf --stanza=bench archive-push %%p'\nmax_wal_size = 4GB\n" \
    "$port" "$work/data" "$DR" "$work" "$work" >> "$work/data/postgresql.conf"
  pgu $bin/pg_ctl -D "$work/data" -l "$work/pgbr/pg.log" -w start > /dev/null
  pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench stanza-create > /dev/null
  psql() { $bin/psql -h 127.0.0.1 -p "$port" -U postgres -Atqc "$1" postgres; }
  for scale in "${@:-20 150}"; do
    for s in $scale; do
      echo "==> pgbench scale $s"
      psql 'drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers' 2> /dev/null
      $bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -i -s "$s" -q postgres > /dev/null 2>&1
      psql checkpoint
      size=$(du -sb --exclude=pg_wal "$work/data" | cut -f1)
      find "$work/data" -type f -exec cat {} + > /dev/null 2>&1 || true  # files come and go
      header "scale $s, $((size / 1048576)) MiB" pgBackRest
      measure runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --type=full backup; bt=$T; bm=$M
      packs() { du -sb "$work/dr/repo/packs" 2> /dev/null | cut -f1 || echo 0; }
      p0=$(packs)
      measure "$DR" -c "$work/dr/dr.toml" backup --policy b; row "full backup" "$T" "$M" "$bt" "$bm"
      p1=$(packs)
      $bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -n -t 1500 -c 1 postgres > /dev/null 2>&1
      measure runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --type=incr backup; bt=$T; bm=$M
      ix=$(index_bytes "$work/dr")
      measure "$DR" -c "$work/dr/dr.toml" backup --policy b; row "incremental (1,500 transactions)" "$T" "$M" "$bt" "$bm"
      meta=$(metadata "$work/dr" $(( $(index_bytes "$work/dr") - ix )))
      p2=$(packs)
      r="$work/r$s"; mkdir -m 700 "$r"; chown postgres "$r"; sync
      measure runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --pg1-path="$r/br" restore; bt=$T; bm=$M; sync
      measure "$DR" -c "$work/dr/dr.toml" restore --policy b --immediate --target-dir "$r/dr"; row "restore" "$T" "$M" "$bt" "$bm"; drt=$T; brt=$bt
      # The disk's floor: the restored files copied from the page cache and synced.
      sync; t0=$(now); cp -a "$r/dr" "$r/floor"; sync -f "$r/floor"; floor=$(secs "$t0" "$(now)"); rm -rf "$r/floor"
      measure runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench verify; bt=$T; bm=$M
      measure "$DR" -c "$work/dr/dr.toml" verify --policy b --data; row "verify --data / pgbackrest verify" "$T" "$M" "$bt" "$bm"
      echo; echo "dr metadata of the incremental (manifest + refs + index): $meta bytes = $(echo "scale=4; 100 * $meta / $size" | bc) % of the data"
      echo "restore vs the disk floor (cp -a + sync, $floor s): dr $(ratio "$drt" "$floor")x, pgBackRest $(ratio "$brt" "$floor")x"
      echo "dr stored: full $((p1 - p0)) bytes, incremental $((p2 - p1)) bytes ($(echo "scale=1; 100 * ($p2 - $p1) / ($p1 - $p0)" | bc) % of the full)"
      rm -rf "$r"
    done
  done
  ;;
*) echo "usage: $0 files [N] | big [SIZE_MB [SMALL_FILES_MB]] | redis [MB] | postgres [SCALE...]" >&2; exit 2 ;;
esac
rm -rf "$work"
