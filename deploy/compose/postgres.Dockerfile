# PostgreSQL 15 with dr inside, so that archive_command can run `dr wal-push`.
# `dr` is the dr service's image (compose `additional_contexts`).
FROM dr AS dr
FROM postgres:15-bookworm
COPY --from=dr /usr/local/bin/dr /usr/local/bin/dr
