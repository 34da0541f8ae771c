#!/usr/bin/env bash
# sluice's added latency and throughput, side by side in one run with no hop (`direct`)
# and a plain nginx reverse proxy (the floor), using the shared rig in ../shared/bench.
#   benches/overhead.sh                   # ns:1, ns:16, ns:64, st:16; 10 s each
#   benches/overhead.sh --rounds 3        # any run.py option passes through
# Installs nginx (apt) and oha (cargo install, pinned) on first use into $BENCH_TOOLS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RIG=${BENCH_RIG:-$ROOT/../shared/bench}
export BENCH_TOOLS=${BENCH_TOOLS:-$HOME/.cache/sluice-bench}
export BENCH_WORKDIR=${BENCH_WORKDIR:-$ROOT/target/bench-work}
OUT=${BENCH_OUT:-$ROOT/target/bench-results}
mkdir -p "$BENCH_TOOLS" "$BENCH_WORKDIR" "$OUT"

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
fi
if ! "$BENCH_TOOLS/cargo/bin/oha" --version 2>/dev/null | grep -q 1.16.0; then
  echo "[overhead] building oha 1.16.0 (a few minutes)" >&2
  cargo install oha --version 1.16.0 --locked --root "$BENCH_TOOLS/cargo"
fi

(cd "$ROOT" && cargo build --release --quiet)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/sluice"
VERSION=$("$BIN" --version | awk '{print $2}')-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)

exec python3 "$RIG/run.py" --targets direct,nginx --out "$OUT" \
  --extra "name=sluice port=18100 version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN\"
     header=@{workdir}/sluice-18100.key" \
  --extra "name=sluice+guardrails port=18101 version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN $ROOT/policies/guardrails/default.toml\"
     header=@{workdir}/sluice-18101.key" \
  "$@"
