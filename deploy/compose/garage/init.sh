#!/bin/sh
# Lay out each single-node Garage, import the demo key, create and allow its bucket.
set -eu
for r in eu us; do
  g="/garage -c /etc/garage-$r.toml --rpc-host garage-$r:3901"
  until node=$($g node id -q 2>/dev/null); do sleep 1; done
  $g layout assign -z "$r" -c 1G "${node%@*}" || true
  $g layout apply --version 1 || true
  $g key import --yes "$GARAGE_KEY_ID" "$GARAGE_SECRET" -n dr || true
  $g bucket create "dr-$r" || true
  $g bucket allow --read --write --owner "dr-$r" --key dr
done
