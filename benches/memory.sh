#!/usr/bin/env bash
# Resident memory of one sluice process as requests add up (issue 13: at most 40 MiB after
# 1 000 000 requests at c=64, flat after warm-up). Starts the shared rig's canned nginx mock,
# sluice in front of it (SQLite in $WORK), and sends N requests with oha at concurrency C in
# STEPS equal parts (sluice on CPU 1, oha and the mock on CPU 0, as in the rig). After each
# part it prints the requests so far, sluice's VmRSS (resident now) and VmHWM (the peak so
# far) from /proc, split into RssAnon (heap and stacks) and RssFile (the binary's pages
# and the SQLite files' mappings), the records written and dropped (/metrics), and oha's rate.
#   benches/memory.sh SLUICE_BIN [N=1000000] [C=64] [STEPS=10]
#   STREAM=1 benches/memory.sh …      # the rig's 40-chunk stream instead of a plain answer
#   GUARDRAILS=policies/guardrails/default.toml benches/memory.sh …   # both routes run it
# Needs nginx and the rig's oha (`benches/overhead.sh` installs both on first use).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
bin=$(realpath "$1") n=${2:-1000000} c=${3:-64} steps=${4:-10}
bench_setup memory
work=${WORK:-$ROOT/target/memory-work}
mock_dir=$(cd "$BENCH_RIG/mock" && pwd)
rm -rf "$work" && mkdir -p "$work/tmp"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port) port=$(free_port)
bench_mock_conf "$work" "$mock_port" "$mock_dir" > "$work/mock.conf"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
taskset -c 0 "$nginx" -p "$work" -c "$work/mock.conf" &
mock_pid=$!
route_extra=$(bench_guardrails "$work" "${GUARDRAILS:-}")
bench_config "127.0.0.1:$port" "sqlite://$work/sluice.db" "http://127.0.0.1:$mock_port/v1" \
  "http://127.0.0.1:$mock_port/stream/v1" "$route_extra" > "$work/sluice.toml"
export SLUICE_ADMIN_TOKEN=bench-admin-token SLUICE_LOG=warn
taskset -c 1 "$bin" serve --config "$work/sluice.toml" 2> "$work/sluice.log" &
sluice_pid=$!
trap 'kill -TERM $sluice_pid $mock_pid 2>/dev/null; wait 2>/dev/null' EXIT
url="http://127.0.0.1:$port"
key=$(bench_key "$url" "$bin")
body=$mock_dir/request.json
if [ "${STREAM:-0}" = 1 ]; then body=$mock_dir/request_stream.json; fi
status() { awk -v k="$1" '$1 == k":" {printf "%.1f", $2 / 1024}' "/proc/$sluice_pid/status"; }
counter() { curl -fsS "$url/metrics" | awk -v k="$1" '$1 == k {printf "%d", $2}'; }
echo "sluice $("$bin" --version | awk '{print $2}'), $n requests at c=$c in $steps parts$([ "${STREAM:-0}" = 1 ] && echo ', 40-chunk streams')$([ -n "${GUARDRAILS:-}" ] && echo ", guardrails $GUARDRAILS")"
echo "| requests | VmRSS MiB | VmHWM MiB | RssAnon MiB | RssFile MiB | records written | dropped | req/s |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| 0 | $(status VmRSS) | $(status VmHWM) | $(status RssAnon) | $(status RssFile) | 0 | 0 | |"
per=$((n / steps)) sent=0
for _ in $(seq 1 "$steps"); do
  rate=$(taskset -c 0 "$BENCH_TOOLS/cargo/bin/oha" -n "$per" -c "$c" --no-tui --output-format json \
    -m POST -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -D "$body" "$url/v1/chat/completions" \
    | python3 -c 'import json,sys; o=json.load(sys.stdin); d=o["statusCodeDistribution"]; assert set(d) == {"200"}, d; print(round(o["summary"]["requestsPerSec"]))')
  sent=$((sent + per))
  # The queue drains before the figures are read, so the records are all counted.
  for _ in $(seq 1 100); do
    [ $(( $(counter sluice_records_written_total) + $(counter sluice_records_dropped_total) )) -ge "$sent" ] && break
    sleep 0.1
  done
  echo "| $sent | $(status VmRSS) | $(status VmHWM) | $(status RssAnon) | $(status RssFile) | $(counter sluice_records_written_total) | $(counter sluice_records_dropped_total) | $rate |"
done
