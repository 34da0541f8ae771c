#!/usr/bin/env bash
# The cluster benchmark (issue #9): in one run of the shared rig, a single sluice on SQLite
# (the reference) and 1, 2 and 3 replicas on PostgreSQL behind an nginx round robin, with
# nginx alone as the floor. Reports throughput, CPU per request (sluice's, with the load
# balancer split out), the record stream, and per request PostgreSQL's transactions, rows,
# WAL bytes and CPU (benches/rig.py).
#   benches/cluster.sh                  # ns:64 and st:16, 10 s each
#   benches/cluster.sh --replicas 1,3   # a subset
#   benches/cluster.sh --rounds 3       # any run.py option passes through
# Needs PostgreSQL at $BENCH_PG (default postgres://postgres@127.0.0.1:5432, a role that may
# create databases); installs nginx and oha on first use, as benches/overhead.sh does.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
export BENCH_PG=${BENCH_PG:-postgres://postgres@127.0.0.1:5432}
OUT=${BENCH_OUT:-$ROOT/target/bench-results}
mkdir -p "$OUT"

replicas="1,2,3"
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas=$2; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

bench_setup cluster
psql "$BENCH_PG/postgres" -tAc "SELECT 1" >/dev/null || { echo "no PostgreSQL at $BENCH_PG" >&2; exit 1; }

BIN=$(bench_binary)
VERSION=$("$BIN" --version | awk '{print $2}')-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)

targets=(--extra "name=sluice-sqlite port=18100 version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN\"
     header=@{workdir}/sluice-18100.key")
for n in ${replicas//,/ }; do
  port=$((18200 + 10 * n))
  targets+=(--extra "name=sluice-pg-x$n port=$port version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-cluster-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN $n $BENCH_PG\"
     header=@{workdir}/sluice-$port.key")
done

exec python3 "$ROOT/benches/rig.py" --targets nginx --cases ns:64,st:16 --out "$OUT" "${targets[@]}" "${args[@]}"
