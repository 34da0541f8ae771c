#!/usr/bin/env bash
# sluice's added latency and throughput, side by side in one run with no hop (`direct`)
# and a plain nginx reverse proxy (the floor), using the shared rig in ../shared/bench.
#   benches/overhead.sh                   # ns:1, ns:16, ns:64, st:16; 10 s each
#   benches/overhead.sh --quick           # a one-minute smoke run: ns:64 and st:16, 8 s each,
#                                         # direct, nginx and sluice (no guardrails target)
#   benches/overhead.sh --baseline BIN    # also a target `sluice-base` running another build
#                                         # of sluice (before/after in the same run)
#   benches/overhead.sh --rounds 3        # any run.py option passes through
#   benches/overhead.sh --scaling         # how cost grows instead (benches/scaling.py): CPU µs
#                                         # and callgrind instructions per request as the body,
#                                         # the stream and the tenants grow, beside nginx; its
#                                         # own options pass through (--only body,stream,tenants,
#                                         # --no-callgrind, --duration S, ...); 4-7 minutes
# Besides run.py's table it prints each hop's CPU per request split into user space and the
# kernel, sluice's by thread (SQLite's threads, tokio's workers, the rest), the records
# written and dropped in each run, and how long the record queue took to drain after the
# load (benches/rig.py).
# Installs nginx (apt) and oha (cargo install, pinned) on first use into $BENCH_TOOLS.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
OUT=${BENCH_OUT:-$ROOT/target/bench-results}
mkdir -p "$OUT"

quick=0 baseline="" scaling=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --scaling) scaling=1 ;;
    --baseline) baseline=$(realpath "$2"); shift ;;
    *) args+=("$1") ;;
  esac
  shift
done

bench_setup overhead

BIN=$(bench_binary)
VERSION=$("$BIN" --version | awk '{print $2}')-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo dev)

if [ $scaling = 1 ]; then
  exec python3 "$ROOT/benches/scaling.py" --bin "$BIN" --version "$VERSION" --out "$OUT" "${args[@]}"
fi

targets=(--extra "name=sluice port=18100 version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN\"
     header=@{workdir}/sluice-18100.key")
if [ -n "$baseline" ]; then
  targets+=(--extra "name=sluice-base port=18102 version=$("$baseline" --version | awk '{print $2}')-base
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $baseline\"
     header=@{workdir}/sluice-18102.key")
fi
if [ $quick = 1 ]; then
  # argparse keeps the last value of an option, so the user's own --cases or --duration
  # (which come after these) still win.
  args=(--cases ns:64,st:16 --duration 8 --warmup 1 "${args[@]}")
else
  targets+=(--extra "name=sluice+guardrails port=18101 version=$VERSION
     cmd=\"bash $ROOT/benches/sluice-target.sh {port} {upstream} {upstream_stream} {workdir} $BIN $ROOT/policies/guardrails/default.toml\"
     header=@{workdir}/sluice-18101.key")
fi

exec python3 "$ROOT/benches/rig.py" --targets direct,nginx --out "$OUT" "${targets[@]}" "${args[@]}"
