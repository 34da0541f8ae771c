#!/usr/bin/env bash
# The bench rig's `--extra` command for sluice: writes a config that maps the rig's models
# (`mock` → the canned upstream, `mock-stream` → its streaming path), starts sluice, mints
# a key into {workdir}/sluice.key (the rig reads it as a header line), then waits on sluice
# so the rig can measure and stop it.
#   sluice-target.sh PORT UPSTREAM_URL UPSTREAM_STREAM_URL WORKDIR SLUICE_BIN [GUARDRAILS]
# With a GUARDRAILS file, both routes run its input and output rules (the guardrail cost).
set -euo pipefail
. "$(dirname "$0")/common.sh"
port=$1 upstream=$2 upstream_stream=$3 work=$4 bin=$5 guardrails=${6:-}
work="$work/sluice-$port"
mkdir -p "$work"
conf="$work/sluice-bench.toml"
db="$work/sluice-bench.db"
route_extra=$(bench_guardrails "$work" "$guardrails")
rm -f "$db" "$db-wal" "$db-shm" "$work/sluice.key"
bench_config "127.0.0.1:$port" "sqlite://$db" "$upstream" "$upstream_stream" "$route_extra" > "$conf"
export SLUICE_ADMIN_TOKEN=bench-admin-token SLUICE_LOG=warn
"$bin" serve --config "$conf" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' TERM INT
url="http://127.0.0.1:$port"
key=$(bench_key "$url" "$bin")
echo "Authorization: Bearer $key" > "$4/sluice-$port.key"
wait $pid
