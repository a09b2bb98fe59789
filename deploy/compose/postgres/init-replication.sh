#!/bin/sh
# Lets dr (stream mode) connect for pg_basebackup over the compose network.
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
