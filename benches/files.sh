#!/usr/bin/env bash
# Benchmark: dr backup/restore of a ~1 GB mixed-compressibility tree against the raw pipeline
# `tar | zstd -3 -T2 | age` (and `age -d | zstd -d | tar x`) on the same data, in the same run,
# warm page cache. Prints times, throughput ratios (>1 = dr faster) and dr restore's peak RSS.
#
#   benches/files.sh [SIZE_MB]     (default 1024; needs: age, zstd, tar; builds dr --release)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-1024}
for t in age age-keygen zstd tar; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y age zstd tar" >&2; exit 2; }; done
cargo build --release --quiet
DR="${CARGO_TARGET_DIR:-$PWD/target}/release/dr"
work=$(mktemp -d "${TMPDIR:-/tmp}/dr-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
data=$work/data; mkdir -p "$data/big" "$data/small"

part=$((size_mb * 3 / 10))
head -c "${part}M" /dev/urandom > "$data/big/random.bin"                     # incompressible
head -c "$((part * 3 / 4))M" /dev/urandom | base64 -w 120 > "$data/big/b64.txt" # ~1.3x
{ seq 1 100000000 || true; } | head -c "${part}M" > "$data/big/seq.txt"  # highly compressible
small=$((size_mb - 3 * part)); n=$((small * 1024 / 48))
head -c "$((small * 3 / 4))M" /dev/urandom | base64 -w 100 | split -b 49152 -a 5 - "$data/small/f-"
total=$(du -sb "$data" | cut -f1)
cat "$data"/big/* "$data"/small/* > /dev/null   # warm cache

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

# Reference pipeline.
age-keygen -o "$work/ref.key" 2>/dev/null; recip=$(age-keygen -y "$work/ref.key")
t0=$(now); tar -cf - -C "$data" . | zstd -3 -T2 -q | age -r "$recip" > "$work/ref.tar.zst.age"; t1=$(now)
ref_backup=$(secs "$t0" "$t1")
mkdir "$work/ref-out"; sync
t0=$(now); age -d -i "$work/ref.key" "$work/ref.tar.zst.age" | zstd -d -q | tar -xf - -C "$work/ref-out"; t1=$(now)
ref_restore=$(secs "$t0" "$t1")
ref_size=$(stat -c %s "$work/ref.tar.zst.age")
rm -rf "$work/ref-out"

# dr on a local repository.
$DR init --dir "$work/setup" > /dev/null
printf 'source = { type = "files", path = "%s" }\ntargets = ["local"]\n' "$data" > "$work/setup/policies/bench.toml"
sync
t0=$(now); $DR -c "$work/setup/dr.toml" backup --policy bench > /dev/null; t1=$(now)
dr_backup=$(secs "$t0" "$t1")
dr_size=$(du -sb "$work/setup/repo" | cut -f1)
t0=$(now); $DR -c "$work/setup/dr.toml" restore --policy bench --target-dir "$work/dr-out" --json > "$work/restore.json"; t1=$(now)
dr_restore=$(secs "$t0" "$t1")
rss=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["peak_rss_bytes"] // 1048576)' "$work/restore.json")
diff -r "$data" "$work/dr-out" > /dev/null || { echo "restored tree differs!" >&2; exit 1; }

mb=$(echo "$total / 1048576" | bc)
printf '\nfiles benchmark: %s MiB in %s files, %s cores\n' "$mb" "$(find "$data" -type f | wc -l)" "$(nproc)"
printf '%-34s %9s %12s %10s\n' "" "time (s)" "MiB/s" "stored MiB"
printf '%-34s %9.2f %12.0f %10.0f\n' "tar | zstd -3 -T2 | age" "$ref_backup" "$(echo "$mb / $ref_backup" | bc -l)" "$(echo "$ref_size / 1048576" | bc -l)"
printf '%-34s %9.2f %12.0f %10.0f\n' "dr backup" "$dr_backup" "$(echo "$mb / $dr_backup" | bc -l)" "$(echo "$dr_size / 1048576" | bc -l)"
printf '%-34s %9.2f %12.0f\n' "age -d | zstd -d | tar x" "$ref_restore" "$(echo "$mb / $ref_restore" | bc -l)"
printf '%-34s %9.2f %12.0f   peak RSS %s MiB\n' "dr restore" "$dr_restore" "$(echo "$mb / $dr_restore" | bc -l)" "$rss"
printf '\nbackup throughput ratio dr/raw:  %.2fx (target >= 0.8)\n' "$(echo "$ref_backup / $dr_backup" | bc -l)"
printf 'restore throughput ratio dr/raw: %.2fx (target >= 1.0)\n' "$(echo "$ref_restore / $dr_restore" | bc -l)"
printf 'restore peak RSS: %s MiB (target <= 64)\n' "$rss"
