#!/bin/sh
# First start (runs as root): `dr init` makes keys (0600) and dr.toml in /etc/dr for the dr
# daemon (uid 10001); the stack's storage, API and daemon settings, policies and drills are
# added from /config. The PostgreSQL container gets its own copy in /etc/dr-pg (uid 999) with
# the chunk-id key and the public recipients only: the database host can write backups it
# cannot read. Later starts keep the keys (they decrypt every backup ever made).
set -eu
if [ ! -f /etc/dr/dr.toml ]; then
  dr init --dir /etc/dr >/dev/null
  { echo 'state_dir = "/var/lib/dr/state"'; cat /etc/dr/dr.toml /config/dr.stack.toml; } > /tmp/dr.toml
  mv /tmp/dr.toml /etc/dr/dr.toml
  cp /config/policies/*.toml /etc/dr/policies/
  cp /config/restore-drills/*.toml /etc/dr/restore-drills/
  hash=$(printf %s "$DR_DEMO_TOKEN" | sha256sum | cut -d' ' -f1)
  printf '[tokens.demo]\nrole = "operator"\ntoken_sha256 = "%s"\n' "$hash" > /etc/dr/tokens.toml
  chmod 600 /etc/dr/tokens.toml
  mkdir -p /etc/dr-pg/keys /etc/dr-pg/policies
  grep -v -e '^identity_file' -e '^signing_key_file' -e '^tokens_file' /etc/dr/dr.toml \
    | sed 's#^state_dir = .*#state_dir = "/tmp/dr-state"#' > /etc/dr-pg/dr.toml
  cp /etc/dr/keys/chunk-id.key /etc/dr-pg/keys/
  cp /config/policies/pg-main.toml /etc/dr-pg/policies/
  chown -R 10001:10001 /etc/dr
  chown -R 999:999 /etc/dr-pg
fi
dr -c /etc/dr/dr.toml validate
