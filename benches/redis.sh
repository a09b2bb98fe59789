#!/usr/bin/env bash
# Benchmark: `dr backup` of a ~1 GB Redis dataset (SYNC stream, zstd, encryption, local
# repository) against `redis-cli --rdb FILE` (the plain RDB download) in the same run.
#
#   benches/redis.sh [KEYS] [VALUE_BYTES]     (defaults 1000000 and 1000: ~1 GB of values)
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${1:-1000000}; size=${2:-1000}
for t in redis-server redis-cli python3; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y redis-server redis-tools" >&2; exit 2; }; done
cargo build --release --quiet
DR="${CARGO_TARGET_DIR:-$PWD/target}/release/dr"
work=$(mktemp -d /tmp/dr-redisbench.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'redis-cli -p $port shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
redis-server --port "$port" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no --repl-diskless-sync yes --repl-diskless-sync-delay 0 --daemonize yes --logfile "$work/redis.log"
sleep 0.5
echo "==> loading $keys keys of $size random bytes (half base64 text, half binary-ish)"
python3 - "$keys" "$size" <<'PY' | redis-cli -p "$port" --pipe > /dev/null
import os, sys, base64
n, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(n):
    raw = os.urandom(size * 3 // 4)
    v = base64.b64encode(raw) if i % 2 else (raw[: size // 2] + bytes(size // 2))
    k = b"key:%d" % i
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
PY
now() { date +%s.%N; }
t0=$(now); redis-cli -p "$port" --rdb "$work/ref.rdb" > /dev/null; t1=$(now)
ref=$(echo "$t1 - $t0" | bc); rdb_mb=$(( $(stat -c %s "$work/ref.rdb") / 1048576 ))
$DR init --dir "$work/dr" > /dev/null
printf 'source = { type = "redis", url = "redis://127.0.0.1:%s" }\ntargets = ["local"]\n' "$port" > "$work/dr/policies/r.toml"
t0=$(now); $DR -c "$work/dr/dr.toml" backup --policy r > /dev/null; t1=$(now)
dr=$(echo "$t1 - $t0" | bc); stored_mb=$(( $(du -sb "$work/dr/repo" | cut -f1) / 1048576 ))
printf '\nredis benchmark: %s keys, RDB %s MiB, %s cores\n' "$keys" "$rdb_mb" "$(nproc)"
printf '%-40s %8.2f s\n' "redis-cli --rdb (plain file)" "$ref"
printf '%-40s %8.2f s   stored %s MiB\n' "dr backup (zstd + age + local repo)" "$dr" "$stored_mb"
printf 'ratio dr/redis-cli: %.2fx (target <= 1.1)\n' "$(echo "$dr / $ref" | bc -l)"
