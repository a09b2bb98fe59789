# Sourced by benchmarks: start a single-node Garage 2.5.0 (S3) on 127.0.0.1 for the run.
# (Condensed from the project's tested service script; `cargo install garage --version
# 2.5.0 --locked` provides the binary.)
#
#   garage_start DIR PORT BUCKET   -> sets GARAGE_ENDPOINT, GARAGE_KEY_ID, GARAGE_SECRET
#   garage_stop DIR
GARAGE_KEY_ID=GK0123456789abcdef01234567
GARAGE_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
garage_start() {
  local dir=$1 port=$2 bucket=$3 bin
  bin=${GARAGE_BIN:-$(command -v garage || true)}
  [ -x "$bin" ] || { echo "missing garage: cargo install garage --version 2.5.0 --locked" >&2; return 2; }
  mkdir -p "$dir/meta" "$dir/data"
  cat > "$dir/garage.toml" <<CONF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
CONF
  local g=("$bin" -c "$dir/garage.toml")
  RUST_LOG=garage=warn nohup "${g[@]}" server > "$dir/garage.log" 2>&1 &
  echo $! > "$dir/garage.pid"
  for _ in $(seq 1 100); do "${g[@]}" status > /dev/null 2>&1 && break; sleep 0.1; done
  local node; node=$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)
  "${g[@]}" layout assign -z dc1 -c 10G "$node" > /dev/null
  "${g[@]}" layout apply --version 1 > /dev/null
  "${g[@]}" key import --yes -n bench "$GARAGE_KEY_ID" "$GARAGE_SECRET" > /dev/null
  "${g[@]}" bucket create "$bucket" > /dev/null
  "${g[@]}" bucket allow --read --write --owner "$bucket" --key "$GARAGE_KEY_ID" > /dev/null
  for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  GARAGE_ENDPOINT="http://127.0.0.1:$port"
}
garage_stop() { [ -f "$1/garage.pid" ] && kill "$(cat "$1/garage.pid")" 2> /dev/null || true; }
