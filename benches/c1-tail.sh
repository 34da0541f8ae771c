#!/usr/bin/env bash
# The latency tail at concurrency 1, and what the machine took from it: nginx (proxy_pass,
# keep-alive upstream) and sluice in turn on CPU 1, the rig's canned nginx mock and a python
# keep-alive client on CPU 0. Per round and target: p50/p99/p99.9 of the round trip through
# the target and straight to the mock (added = the difference), how many requests took
# over 1.5 ms, and the hypervisor's steal time on CPU 1 during the round (/proc/stat), which
# a latency figure cannot tell from the target's own cost.
#   c1-tail.sh SLUICE_BIN [ROUNDS=3] [N=20000]
# The python client is slower than oha, so the added figures are not the rig's; compare the
# two targets within one run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/benches/common.sh"
bin=$(realpath "$1") rounds=${2:-3} n=${3:-20000}
rig=$ROOT/../shared/bench
[ -f "$rig/run.py" ] || rig=$ROOT/../../shared/bench
mock_dir=$(cd "$rig/mock" && pwd)
work=${WORK:-$ROOT/target/c1-tail-work}
rm -rf "$work" && mkdir -p "$work/tmp"
bench_nginx
nginx=$(command -v nginx || echo /usr/sbin/nginx)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port) sluice_port=$(free_port) proxy_port=$(free_port)

bench_mock_conf "$work" "$mock_port" "$mock_dir" > "$work/mock.conf"
cat > "$work/proxy.conf" <<CONF
worker_processes 1; daemon off; pid $work/proxy.pid; error_log $work/proxy.error.log warn;
events { worker_connections 1024; }
http {
  access_log off; client_body_temp_path $work/tmp/pbody; proxy_temp_path $work/tmp/pproxy;
  fastcgi_temp_path $work/tmp/pf; uwsgi_temp_path $work/tmp/pu; scgi_temp_path $work/tmp/ps;
  keepalive_requests 10000000; keepalive_timeout 120s;
  upstream mock { server 127.0.0.1:$mock_port; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$proxy_port;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }
}
CONF
bench_config "127.0.0.1:$sluice_port" "sqlite://$work/sluice.db" "http://127.0.0.1:$mock_port/v1" \
  "http://127.0.0.1:$mock_port/stream/v1" "" > "$work/sluice.toml"

taskset -c 0 "$nginx" -p "$work" -c "$work/mock.conf" & mock_pid=$!
taskset -c 1 "$nginx" -p "$work" -c "$work/proxy.conf" & proxy_pid=$!
export SLUICE_ADMIN_TOKEN=bench-admin-token SLUICE_LOG=warn
(cd "$work" && exec taskset -c 1 "$bin" serve --config "$work/sluice.toml" 2> "$work/sluice.log") &
sluice_pid=$!
trap 'kill -TERM $sluice_pid $proxy_pid $mock_pid 2>/dev/null; wait 2>/dev/null' EXIT
url="http://127.0.0.1:$sluice_port"
for _ in $(seq 1 300); do curl -fsS "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" workspaces create bench --url "$url" >/dev/null
key=$("$bin" keys create --workspace bench --url "$url" 2>/dev/null)

taskset -c 0 python3 - "$mock_port" "$proxy_port" "$sluice_port" "$key" "$mock_dir/request.json" \
  "$rounds" "$n" <<'PY'
import http.client, sys, time
mock, proxy, sluice, key, body_file, rounds, n = sys.argv[1:]
rounds, n = int(rounds), int(n)
body = open(body_file, 'rb').read()
headers = {'Authorization': f'Bearer {key}', 'Content-Type': 'application/json'}

def steal_cpu1():
    for line in open('/proc/stat'):
        if line.startswith('cpu1 '):
            return int(line.split()[8])

def times(port, count):
    conn = http.client.HTTPConnection('127.0.0.1', int(port))
    out = []
    for _ in range(count):
        t = time.perf_counter_ns()
        conn.request('POST', '/v1/chat/completions', body, headers)
        r = conn.getresponse(); r.read()
        out.append(time.perf_counter_ns() - t)
        assert r.status == 200, r.status
    return out[count // 10:]  # the first tenth warms up

def q(xs, f):
    return xs[int(f * (len(xs) - 1))] / 1000

tick = 100  # USER_HZ: /proc/stat counts in 1/100 s
print(f"{'round':>5} {'target':>6} {'p50 us':>7} {'p99':>6} {'p99.9':>6} {'+p50':>5} {'+p99':>6} {'>1.5ms':>6} {'steal cpu1':>10}")
for r in range(rounds):
    for name, port in (('nginx', proxy), ('sluice', sluice)):
        direct = sorted(times(mock, n // 4))
        s0, t0 = steal_cpu1(), time.monotonic()
        xs = times(port, n)
        steal = (steal_cpu1() - s0) / tick / (time.monotonic() - t0)
        slow = sum(x > 1_500_000 for x in xs)
        xs.sort()
        print(f"{r:>5} {name:>6} {q(xs,.5):>7.0f} {q(xs,.99):>6.0f} {q(xs,.999):>6.0f} "
              f"{q(xs,.5)-q(direct,.5):>5.0f} {q(xs,.99)-q(direct,.99):>6.0f} {slow:>6} {steal:>9.1%}")
PY
