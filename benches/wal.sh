#!/usr/bin/env bash
# Benchmark: PostgreSQL WAL archiving and point-in-time recovery, dr against pgBackRest
# (archive-async=y, process-max=2, zst level 3, local posix repository) and the raw
# `zstd -3 -T2 | age` pipeline, on the same real segments, in one run.
#
#   benches/wal.sh [SEGMENTS]        (default 64: 1 GiB of WAL from a bulk load + pgbench)
#
# 1. A PostgreSQL 15 cluster archives with `cp` into a folder; base backups by dr and
#    pgBackRest, and by dr to a Garage (S3) node started for the run; then a bulk load and
#    pgbench make SEGMENTS segments of WAL.
# 2. The cluster stops. For each tool, a copy of its data directory gets every segment in
#    pg_wal with an archive_status/.ready file, and the segments are pushed one call at a
#    time, in order, each call's .ready renamed to .done after it returned 0 -- exactly what
#    PostgreSQL's archiver does. Timed: all calls. dr pushes them once to its local
#    repository and once to Garage.
# 3. Point-in-time recovery to the end of that WAL: `dr restore --latest --start` against
#    `pgbackrest restore` + `pg_ctl start`, both until the server is promoted.
# Run as root (servers run as the postgres user). Needs pgbackrest, age, zstd, bc, garage.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/garage.sh
. benches/lib/pg.sh
segs=${1:-64}
bin=/usr/lib/postgresql/15/bin
for t in pgbackrest age age-keygen zstd bc; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y pgbackrest age zstd bc" >&2; exit 2; }; done
cargo build --release --quiet
DR="${CARGO_TARGET_DIR:-$PWD/target}/release/dr"
work=$(mktemp -d /tmp/dr-walbench.XXXXXX); chmod 755 "$work"
stop_all() { for d in "$work"/data "$work"/pitr-dr "$work"/pitr-br; do [ -d "$d" ] && pgu $bin/pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true; done; garage_stop "$work/garage"; }
cleanup() { stop_all; rm -rf "$work"; }
if [ -n "${KEEP:-}" ]; then echo "keeping $work" >&2; else trap cleanup EXIT; fi
port=$(freeport)
psqlc() { $bin/psql -h 127.0.0.1 -p "$1" -U postgres -Atc "$2" postgres; }

dr_pg_init
garage_start "$work/garage" "$(freeport)" wal
printf '%s' "$GARAGE_KEY_ID" > "$work/dr/s3.key"; printf '%s' "$GARAGE_SECRET" > "$work/dr/s3.secret"; chmod 600 "$work/dr/s3.key" "$work/dr/s3.secret"
printf '\n[storage.garage]\ntype = "s3"\nbucket = "wal"\nregion = "garage"\nendpoint = "%s"\naccess_key_id_file = "s3.key"\nsecret_access_key_file = "s3.secret"\n' "$GARAGE_ENDPOINT" >> "$work/dr/dr.toml"
sed 's/targets = \["local"\]/targets = ["garage"]/' "$work/dr/policies/pg.toml" > "$work/dr/policies/pg-s3.toml"
mkdir -p "$work/pgbr/spool" "$work/data" "$work/segs"
pgbr_conf archive-async=y "spool-path=$work/pgbr/spool" archive-check=n
[global]
repo1-path=$work/pgbr/repo
compress-type=zst
compress-level=3
process-max=2
archive-async=y
spool-path=$work/pgbr/spool
log-path=$work/pgbr/log
lock-path=$work/pgbr
start-fast=y
archive-check=n
[bench]
pg1-path=$work/data
pg1-port=$port
pg1-socket-path=$work/data
CONF
# The same at zst level 1 (dr's default for WAL), in its own repository and spool.
mkdir -p "$work/pgbr/repo-l1" "$work/pgbr/spool-l1"
sed -e "s#^repo1-path=.*#repo1-path=$work/pgbr/repo-l1#" -e "s#^spool-path=.*#spool-path=$work/pgbr/spool-l1#" \
  -e "s#^compress-level=.*#compress-level=1#" "$work/pgbr/pgbackrest.conf" > "$work/pgbr/pgbackrest-l1.conf"
chown -R postgres "$work/dr" "$work/pgbr" "$work/data" "$work/segs"
pgu $bin/initdb -D "$work/data" -U postgres --auth=trust --no-sync > /dev/null
pg_conf "cp %p $work/segs/%f" 8GB
pgu $bin/pg_ctl -D "$work/data" -l "$work/pgbr/pg.log" -w start > /dev/null
pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench stanza-create > /dev/null
pgu pgbackrest --config="$work/pgbr/pgbackrest-l1.conf" --stanza=bench stanza-create > /dev/null
echo "==> base backups"
pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --type=full backup
$DR -c "$work/dr/dr.toml" backup --policy pg > /dev/null
$DR -c "$work/dr/dr.toml" backup --policy pg-s3 > /dev/null
echo "==> making $segs segments of WAL (bulk load + pgbench)"
$bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -i -s 1 -q postgres > /dev/null 2>&1
while [ "$(ls "$work/segs" | grep -c '^[0-9A-F]\{24\}$')" -lt "$segs" ]; do
  psqlc "$port" "create table if not exists filler (id bigint, t text); insert into filler select g, md5(g::text) || md5((g+1)::text) from generate_series(1, 400000) g" > /dev/null
  $bin/pgbench -h 127.0.0.1 -p "$port" -U postgres -n -c 2 -t 500 postgres > /dev/null 2>&1
  psqlc "$port" "select pg_switch_wal()" > /dev/null
  sleep 0.5
done
end_ts=$(psqlc "$port" "select now()")
psqlc "$port" "select pg_switch_wal()" > /dev/null; sleep 1
rows=$(psqlc "$port" "select count(*) from filler")
pgu $bin/pg_ctl -D "$work/data" -m fast -w stop > /dev/null
list=$(ls "$work/segs" | grep '^[0-9A-F]\{24\}$' | sort)
n=$(echo "$list" | wc -l); bytes=$(cd "$work/segs" && cat $list | wc -c); mib=$(echo "$bytes / 1048576" | bc)
find "$work/segs" -type f -exec cat {} + > /dev/null

# A data directory whose pg_wal holds every segment, each marked .ready.
fake_cluster() {
  local d=$1; rm -rf "$d"; mkdir -p "$d"
  (cd "$work/data" && tar --exclude=./pg_wal -cf - .) | tar -xf - -C "$d"
  mkdir -p "$d/pg_wal/archive_status"
  for f in $list; do cp "$work/segs/$f" "$d/pg_wal/$f"; touch "$d/pg_wal/archive_status/$f.ready"; done
  chown -R postgres "$d"; chmod 700 "$d"
}
# PostgreSQL's archiver: one call at a time, in order; .ready -> .done after each success.
archiver() {
  local d=$1; shift
  for f in $list; do
    "$@" "$d/pg_wal/$f" || { echo "archive call failed for $f" >&2; exit 1; }
    mv "$d/pg_wal/archive_status/$f.ready" "$d/pg_wal/archive_status/$f.done"
  done
}
# The WAL the PITR below replays is the one these runs archive; so the push runs go first.
fake_cluster "$work/fake-br"; sync
t0=$(now); archiver "$work/fake-br" runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --pg1-path="$work/fake-br" archive-push; t1=$(now); br_push=$(secs "$t0" "$t1")
fake_cluster "$work/fake-br1"; sync
t0=$(now); archiver "$work/fake-br1" runuser -u postgres -- pgbackrest --config="$work/pgbr/pgbackrest-l1.conf" --stanza=bench --pg1-path="$work/fake-br1" archive-push; t1=$(now); br1_push=$(secs "$t0" "$t1")
fake_cluster "$work/fake-dr"; chown -R postgres "$work/dr"; sync
t0=$(now); archiver "$work/fake-dr" runuser -u postgres -- "$DR" -c "$work/dr/dr.toml" wal-push --policy pg; t1=$(now); dr_push=$(secs "$t0" "$t1")
fake_cluster "$work/fake-s3"; sync
t0=$(now); archiver "$work/fake-s3" runuser -u postgres -- "$DR" -c "$work/dr/dr.toml" wal-push --policy pg-s3; t1=$(now); s3_push=$(secs "$t0" "$t1")
# Garage's own ceiling on this machine: the objects dr stored locally, PUT by curl 2 at a time
# (no compression, no encryption on the client side).
put_one() { curl -sS -f --aws-sigv4 "aws:amz:garage:s3" --user "$GARAGE_KEY_ID:$GARAGE_SECRET" \
  -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T "$1" "$GARAGE_ENDPOINT/wal/ceiling/$(basename "$1")" -o /dev/null; }
export -f put_one; export GARAGE_KEY_ID GARAGE_SECRET GARAGE_ENDPOINT
t0=$(now); find "$work/dr/repo/wal/pg" -type f | xargs -P2 -I{} bash -c 'put_one "$1"' _ {}; t1=$(now); put_only=$(secs "$t0" "$t1")
age-keygen -o "$work/ref.key" 2>/dev/null; recip=$(age-keygen -y "$work/ref.key")
sync; t0=$(now); (cd "$work/segs" && cat $list) | zstd -3 -T2 -q | age -r "$recip" > "$work/ref.age"; sync -f "$work/ref.age"; t1=$(now); raw_push=$(secs "$t0" "$t1")
sync; t0=$(now); (cd "$work/segs" && cat $list) | zstd -1 -T2 -q | age -r "$recip" > "$work/ref1.age"; sync -f "$work/ref1.age"; t1=$(now); raw1_push=$(secs "$t0" "$t1")
stored() { du -sm "$1" | cut -f1; }

echo "==> point-in-time recovery to the end of the WAL ($end_ts)"
pport=$(freeport)
t0=$(now)
$DR -c "$work/dr/dr.toml" restore --policy pg --latest --target-dir "$work/pitr-dr" --start --port "$pport" > "$work/dr-pitr.out"
t1=$(now); dr_pitr=$(secs "$t0" "$t1")
dr_rows=$(psqlc "$pport" "select count(*) from filler")
pgu $bin/pg_ctl -D "$work/pitr-dr" -m immediate stop > /dev/null
mkdir -m 700 "$work/pitr-br"; chown postgres "$work/pitr-br"
t0=$(now)
pgu pgbackrest --config="$work/pgbr/pgbackrest.conf" --stanza=bench --pg1-path="$work/pitr-br" --type=default restore
pgu $bin/pg_ctl -D "$work/pitr-br" -l "$work/pgbr/br-pitr.log" -o "-c port=$pport -c archive_mode=off -c unix_socket_directories=$work/pitr-br" start > /dev/null
until [ "$(psqlc "$pport" "select pg_is_in_recovery()" 2>/dev/null)" = "f" ]; do sleep 0.05; done
t1=$(now); br_pitr=$(secs "$t0" "$t1")
br_rows=$(psqlc "$pport" "select count(*) from filler")
pgu $bin/pg_ctl -D "$work/pitr-br" -m immediate stop > /dev/null

rate() { echo "$n / $1" | bc -l; }
printf '\nWAL benchmark: %s segments, %s MiB, %s cores\n' "$n" "$mib" "$(nproc)"
printf '%-50s %9s %12s %9s\n' "archiving (one call per segment, in order)" "time s" "segments/s" "MiB"
printf '%-50s %9.2f %12.1f %9s\n' "pgBackRest archive-push (async, process-max=2, zst 3)" "$br_push" "$(rate "$br_push")" "$(stored "$work/pgbr/repo/archive")"
printf '%-50s %9.2f %12.1f %9s\n' "pgBackRest archive-push, zst level 1" "$br1_push" "$(rate "$br1_push")" "$(stored "$work/pgbr/repo-l1/archive")"
printf '%-50s %9.2f %12.1f %9s\n' "dr wal-push (zstd level 1, encrypted)" "$dr_push" "$(rate "$dr_push")" "$(stored "$work/dr/repo/wal/pg")"
printf '%-50s %9.2f %12.1f\n' "dr wal-push to Garage (S3)" "$s3_push" "$(rate "$s3_push")"
printf '%-50s %9.2f %12.1f %9s\n' "cat | zstd -3 -T2 | age (one stream, synced)" "$raw_push" "$(rate "$raw_push")" "$(stored "$work/ref.age")"
printf '%-50s %9.2f %12.1f %9s\n' "cat | zstd -1 -T2 | age (one stream, synced)" "$raw1_push" "$(rate "$raw1_push")" "$(stored "$work/ref1.age")"
printf 'throughput: dr/pgBackRest %.2fx (target >= 1.5; %.2fx against pgBackRest at level 1), dr/raw pipeline %.2fx (target >= 0.8; %.2fx against zstd -1)\n' \
  "$(echo "$br_push / $dr_push" | bc -l)" "$(echo "$br1_push / $dr_push" | bc -l)" "$(echo "$raw_push / $dr_push" | bc -l)" "$(echo "$raw1_push / $dr_push" | bc -l)"
printf '%-50s %9.2f %12.1f\n' "Garage alone: curl PUT of dr's stored objects" "$put_only" "$(rate "$put_only")"
printf 'to Garage: %.1f segments/s (target >= 30); on these 2 cores compression alone (zstd -1 | age) reaches %.1f, Garage alone %.1f\n' "$(rate "$s3_push")" "$(rate "$raw1_push")" "$(rate "$put_only")"
printf '\n%-46s %9s %12s\n' "PITR to the end (restore + replay + promote)" "time s" "rows"
printf '%-46s %9.2f %12s\n' "pgbackrest restore + pg_ctl start" "$br_pitr" "$br_rows"
printf '%-46s %9.2f %12s\n' "dr restore --latest --start" "$dr_pitr" "$dr_rows"
printf 'PITR time: dr/pgBackRest %.2fx (target <= 0.9); source had %s rows\n' "$(echo "$dr_pitr / $br_pitr" | bc -l)" "$rows"
