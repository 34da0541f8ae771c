#!/usr/bin/env bash
# Instructions per plain request in one sluice binary, counted by callgrind (steady under
# other load, unlike the rig's CPU times). Starts the canned nginx mock of the shared rig,
# `sluice serve` under callgrind in front of it, and a keep-alive client (python, one
# connection; its own cost is not counted). After WARMUP requests the counters are zeroed,
# then N requests are sent and dumped, then 2N more: instructions per request is the
# whole process's (every thread, the record writer's too) count over each window divided
# by its requests, and (2N-window − N-window) / N cancels what a window costs whatever its
# length (timers, the heartbeat).
#   callgrind-request.sh SLUICE_BIN [N=2000] [WARMUP=300]
#   STREAM=1 callgrind-request.sh …   # the rig's 40-chunk stream instead of a plain answer
#   GUARDRAILS=policies/guardrails/default.toml callgrind-request.sh …   # both routes run it
#   callgrind-request.sh nginx …   # the floor instead: the rig's nginx proxy (one process,
#                                  # keep-alive upstream, proxy_buffering off) counted alike
#   CONCURRENCY=64 callgrind-request.sh …   # 64 keep-alive connections, one request in
#                                  # flight on each (the rig's c=64), instead of one
#   CACHE_SIM=1 callgrind-request.sh …   # also simulate the caches (last level 1 MiB, 8-way,
#                                  # 64 B lines; CACHE_LL=size,assoc,line to change it) and
#                                  # print data misses in it per request: what more requests
#                                  # in flight cost in memory, which instructions do not show
# Prints one line per window; leaves the dumps in $WORK (default target/callgrind-work) for
# callgrind_annotate. For function names, relink the release binary unstripped (only the
# binary rebuilds): `cargo rustc --release --bin sluice -- -C strip=none`.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
target=$1 n=${2:-2000} warmup=${3:-300}
work=${WORK:-$ROOT/target/callgrind-work}
rig=$ROOT/../shared/bench
[ -f "$rig/run.py" ] || rig=$ROOT/../../shared/bench
mock_dir=$(cd "$rig/mock" && pwd)
rm -rf "$work" && mkdir -p "$work/tmp"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port) port=$(free_port)
bench_mock_conf "$work" "$mock_port" "$mock_dir" > "$work/mock.conf"
nginx=$(command -v nginx || echo /usr/sbin/nginx)
"$nginx" -p "$work" -c "$work/mock.conf" &
mock_pid=$!
path=/v1/chat/completions key=none
cache_sim=()
[ "${CACHE_SIM:-0}" = 1 ] && cache_sim=(--cache-sim=yes "--LL=${CACHE_LL:-1048576,8,64}")
if [ "$target" = nginx ]; then
  [ "${STREAM:-0}" = 1 ] && path=/stream/v1/chat/completions
  cat > "$work/proxy.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/tmp/pbody;
  proxy_temp_path $work/tmp/pproxy;
  keepalive_requests 10000000;
  upstream mock { server 127.0.0.1:$mock_port; keepalive 256; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:$port;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
CONF
  (cd "$work" && exec valgrind --tool=callgrind "${cache_sim[@]}" --callgrind-out-file="$work/callgrind.out.%p" \
    "$nginx" -p "$work" -c "$work/proxy.conf" 2> "$work/valgrind.log") &
  target_pid=$!
  trap 'kill -TERM $target_pid $mock_pid 2>/dev/null; wait 2>/dev/null' EXIT
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.2
  done
else
  bin=$(realpath "$target")
  route_extra=$(bench_guardrails "$work" "${GUARDRAILS:-}")
  bench_config "127.0.0.1:$port" "sqlite://$work/sluice.db" "http://127.0.0.1:$mock_port/v1" \
    "http://127.0.0.1:$mock_port/stream/v1" "$route_extra" > "$work/sluice.toml"
  export SLUICE_ADMIN_TOKEN=bench-admin-token SLUICE_LOG=warn
  (cd "$work" && exec valgrind --tool=callgrind "${cache_sim[@]}" --callgrind-out-file="$work/callgrind.out.%p" \
    "$bin" serve --config "$work/sluice.toml" 2> "$work/valgrind.log") &
  target_pid=$!
  trap 'kill -TERM $target_pid $mock_pid 2>/dev/null; wait 2>/dev/null' EXIT
  url="http://127.0.0.1:$port"
  for _ in $(seq 1 600); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$bin" workspaces create bench --url "$url" >/dev/null
  key=$("$bin" keys create --workspace bench --url "$url" 2>/dev/null)
fi
# `exec` made the subshell valgrind, whose launcher execs the tool: one pid throughout.
python3 - "$port" "$key" "$mock_dir/request.json" "$n" "$warmup" "$target_pid" "$work" "${STREAM:-0}" "$path" "${CONCURRENCY:-1}" <<'PY'
import http.client, subprocess, sys, glob, os, time, threading
port, key, body_file, n, warmup, pid, work, stream, path, concurrency = sys.argv[1:]
if stream == '1':
    body_file = body_file.replace('request.json', 'request_stream.json')
n, warmup, concurrency = int(n), int(warmup), int(concurrency)
body = open(body_file, 'rb').read()
conns = [http.client.HTTPConnection('127.0.0.1', int(port)) for _ in range(concurrency)]
headers = {'Authorization': f'Bearer {key}', 'Content-Type': 'application/json'}
def send_on(conn, count):
    for _ in range(count):
        conn.request('POST', path, body, headers)
        r = conn.getresponse(); r.read()
        assert r.status == 200, r.status
def send(count):
    # count split over the connections, each with one request in flight at a time.
    share = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    threads = [threading.Thread(target=send_on, args=(c, k)) for c, k in zip(conns, share)]
    for t in threads: t.start()
    for t in threads: t.join()
def dump():
    time.sleep(0.5)  # let the record writer finish the window's batch
    before = set(glob.glob(f'{work}/callgrind.out.*'))
    subprocess.run(['callgrind_control', '-d', pid], check=True, capture_output=True)
    for _ in range(600):
        new = set(glob.glob(f'{work}/callgrind.out.*')) - before
        if new: return new.pop()
        time.sleep(0.1)
    raise SystemExit('no dump')
def total(path):
    """Instructions and, with the cache simulation, last-level data misses (reads + writes)."""
    events = None
    for line in open(path):
        if line.startswith('events:'):
            events = line.split()[1:]
        if line.startswith('summary:') or line.startswith('totals:'):
            counts = dict(zip(events, map(int, line.split()[1:])))
            return counts['Ir'], counts.get('DLmr', 0) + counts.get('DLmw', 0)
send(warmup); dump()
send(n); a, am = total(dump())
send(2 * n); b, bm = total(dump())
print(f'window {n}: {a} Ir, {a / n:.0f} per request')
print(f'window {2 * n}: {b} Ir, {b / (2 * n):.0f} per request')
print(f'difference / {n}: {(b - a) / n:.0f} per request')
if os.environ.get('CACHE_SIM') == '1':
    print(f'LL data misses: window {n}: {am / n:.0f}, window {2 * n}: {bm / (2 * n):.0f}, '
          f'difference / {n}: {(bm - am) / n:.0f} per request')
PY
