#!/usr/bin/env bash
# Benchmark: PostgreSQL 15 full backup and restore with dr vs pgBackRest (compress-type=zst,
# process-max=2, local posix repo) vs the raw `tar | zstd -3 -T2 | age` pipeline, on the same
# `pgbench -i -s SCALE` cluster, warm cache, in one run. Also the block-incremental size after
# light pgbench traffic, and delta restores (--delta) of that incremental onto copies restored
# from the full. Run as root (servers run as the postgres user).
#
#   benches/postgres.sh [SCALE] [TRANSACTIONS]     (defaults 50 and 1500)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/pg.sh
scale=${1:-50}; txns=${2:-1500}
bin=/usr/lib/postgresql/15/bin
for t in pgbackrest age age-keygen zstd; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y pgbackrest age zstd" >&2; exit 2; }; done
cargo build --release --quiet
DR="${CARGO_TARGET_DIR:-$PWD/target}/release/dr"
work=$(mktemp -d /tmp/dr-pgbench.XXXXXX); chmod 755 "$work"
cleanup() { pgu $bin/pg_ctl -D "$work/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$work"; }
if [ -n "${KEEP:-}" ]; then echo "keeping $work" >&2; else trap cleanup EXIT; fi
port=$(freeport)

dr_pg_init
mkdir -p "$work/data"
pgbr_conf
chown -R postgres "$work/dr" "$work/pgbr" "$work/data"
pgu $bin/initdb -D "$work/data" -U postgres --auth=trust --data-checksums --no-sync > /dev/null
pg_conf "$DR -c $work/dr/dr.toml wal-push --policy pg %p && pgbackrest --config=$work/pgbr/pgbackrest.conf --stanza=bench archive-push %p" 4GB
pgu $bin/pg_ctl -D "$work/data" -l "$work/pgbr/pg.log" -w start > /dev/null
pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench stanza-create > /dev/null
echo "==> pgbench -i -s $scale"
$bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -i -s "$scale" -q postgres 2>&1 | tail -1
$bin/psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'checkpoint' postgres
size=$(du -sb --exclude=pg_wal "$work/data" | cut -f1); mb=$(echo "$size / 1048576" | bc)
find "$work/data" -type f -exec cat {} + > /dev/null 2>&1 || true  # files come and go

t0=$(now); pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --type=full backup; t1=$(now); br_backup=$(secs "$t0" "$t1")
t0=$(now); $DR -c "$work/dr/dr.toml" backup --policy pg --json > "$work/dr-full.json"; t1=$(now); dr_backup=$(secs "$t0" "$t1")
age-keygen -o "$work/ref.key" 2>/dev/null; recip=$(age-keygen -y "$work/ref.key")
t0=$(now); tar -cf - -C "$work/data" --exclude=./pg_wal . | zstd -3 -T2 -q | age -r "$recip" > "$work/ref.age"; t1=$(now); raw_backup=$(secs "$t0" "$t1")

# Restores: three interleaved rounds (pgBackRest, dr, raw), medians reported, so that a slow
# moment of this VM's disk (360-910 MB/s measured with dd) hits all three alike. Every restore
# ends with its data on disk: pgBackRest fsyncs each file, dr syncs as it goes and at the end,
# the raw pipeline is followed by `sync -f`. Nothing is deleted in between (ext4 is slower to
# allocate inodes for a while after many deletions); the rounds need ~10 GiB of /tmp.
br_t=(); dr_t=(); raw_t=(); floor_t=()
for round in 1 2 3; do
  r="$work/r$round"; mkdir -m 755 "$r"; mkdir -m 700 "$r/br"; chown postgres "$r/br"; sync
  t0=$(now); /usr/bin/time -f %M -o "$work/br.rss" runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --pg1-path="$r/br" restore; t1=$(now); br_t+=("$(secs "$t0" "$t1")")
  sync
  t0=$(now); $DR -c "$work/dr/dr.toml" restore --policy pg --immediate --target-dir "$r/dr" --json > "$work/dr-restore.json"; t1=$(now); dr_t+=("$(secs "$t0" "$t1")")
  mkdir "$r/raw"; sync
  t0=$(now); age -d -i "$work/ref.key" "$work/ref.age" | zstd -d -q | tar -xf - -C "$r/raw"; sync -f "$r/raw"; t1=$(now); raw_t+=("$(secs "$t0" "$t1")")
  # The floor: no decryption or decompression at all, just the (cached) restored files copied
  # and synced -- what any restore must at least spend writing to this disk.
  sync; t0=$(now); cp -a "$r/dr" "$r/floor"; sync -f "$r/floor"; t1=$(now); floor_t+=("$(secs "$t0" "$t1")")
  echo "restore round $round: pgBackRest ${br_t[-1]} s, dr ${dr_t[-1]} s, raw ${raw_t[-1]} s, copy+sync floor ${floor_t[-1]} s"
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
br_restore=$(median "${br_t[@]}"); dr_restore=$(median "${dr_t[@]}"); raw_restore=$(median "${raw_t[@]}"); floor=$(median "${floor_t[@]}")
dr_rss=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_rss_bytes"] // 1048576)' "$work/dr-restore.json")

echo "==> pgbench -n -c 1 -t $txns, then a second backup"
$bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c 1 -t "$txns" postgres > /dev/null 2>&1
$bin/psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'checkpoint' postgres
$DR -c "$work/dr/dr.toml" backup --policy pg --json > "$work/dr-incr.json"
full=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_stored"])' "$work/dr-full.json")
incr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_stored"])' "$work/dr-incr.json")

# Delta restores: each round's copies (pgBackRest's and dr's restores of the full backup) are
# brought up to the new backup with --delta, beside a full restore of that backup by dr.
# pgBackRest's --delta compares each file's SHA-1 with its manifest and restores changed
# files whole; dr's compares chunk and page-window ids and writes only the changed pages.
echo "==> delta restores onto the three rounds' copies"
pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --type=incr backup
brd_t=(); drd_t=(); drf_t=()
for round in 1 2 3; do
  r="$work/r$round"; sync
  t0=$(now); runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --pg1-path="$r/br" --delta restore; t1=$(now); brd_t+=("$(secs "$t0" "$t1")")
  sync
  t0=$(now); $DR -c "$work/dr/dr.toml" restore --policy pg --immediate --target-dir "$r/dr" --delta --json > "$work/dr-delta.json"; t1=$(now); drd_t+=("$(secs "$t0" "$t1")")
  sync
  t0=$(now); $DR -c "$work/dr/dr.toml" restore --policy pg --immediate --target-dir "$r/drfull" --json > /dev/null; t1=$(now); drf_t+=("$(secs "$t0" "$t1")")
  echo "delta round $round: pgBackRest --delta ${brd_t[-1]} s, dr --delta ${drd_t[-1]} s, dr full ${drf_t[-1]} s"
done
br_delta=$(median "${brd_t[@]}"); dr_delta=$(median "${drd_t[@]}"); dr_full2=$(median "${drf_t[@]}")
read -r d_written d_reused <<< "$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["restore"]["bytes"], r["restore"]["reused"])' "$work/dr-delta.json")"

printf '\npostgres benchmark: pgbench scale %s, %s MiB data, %s cores\n' "$scale" "$mb" "$(nproc)"
printf '%-30s %10s %10s\n' "" "backup s" "restore s (median of 3)"
printf '%-30s %10.2f %10.2f   restore RSS %s MiB\n' "pgBackRest (zst, process-max=2)" "$br_backup" "$br_restore" "$(( $(cat "$work/br.rss") / 1024 ))"
printf '%-30s %10.2f %10.2f\n' "tar | zstd -3 -T2 | age" "$raw_backup" "$raw_restore"
printf '%-30s %10.2f %10.2f   restore RSS %s MiB\n' "dr" "$dr_backup" "$dr_restore" "$dr_rss"
printf '%-30s %10s %10.2f   (cp -a of the cached restored files + sync: no restore can be faster)\n' "disk floor" "" "$floor"
printf '\ndr/pgBackRest time: backup %.2fx (target <= 0.35), restore %.2fx (target <= 0.5)\n' "$(echo "$dr_backup / $br_backup" | bc -l)" "$(echo "$dr_restore / $br_restore" | bc -l)"
printf 'restore vs disk floor: dr %.2fx, pgBackRest %.2fx\n' "$(echo "$dr_restore / $floor" | bc -l)" "$(echo "$br_restore / $floor" | bc -l)"
printf 'block incremental after %s transactions: %s of %s bytes stored = %.1f %% (target <= 10 %%)\n' "$txns" "$incr" "$full" "$(echo "100 * $incr / $full" | bc -l)"
printf 'delta restore (%.1f %% of the bytes changed): pgBackRest --delta %.2f s, dr --delta %.2f s, dr full %.2f s\n' "$(echo "100 * $d_written / ($d_written + $d_reused)" | bc -l)" "$br_delta" "$dr_delta" "$dr_full2"
printf 'dr --delta: %.2fx dr full restore (target <= 0.25), %.2fx pgBackRest --delta (target <= 1)\n' "$(echo "$dr_delta / $dr_full2" | bc -l)" "$(echo "$dr_delta / $br_delta" | bc -l)"
