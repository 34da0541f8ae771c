#!/usr/bin/env bash
# The bench rig's `--extra` command for N sluice replicas on PostgreSQL behind an nginx
# round robin (the issue's cluster benchmark). Creates a fresh database `bench_<port>`, writes
# one config, starts N `sluice serve` replicas on PORT+1..PORT+N and nginx on PORT, mints a
# key into {workdir}/sluice-PORT.key, then waits, so the rig measures and stops the whole
# tree (replicas, nginx). benches/rig.py splits the tree's CPU into sluice and nginx.
#   sluice-cluster-target.sh PORT UPSTREAM_URL UPSTREAM_STREAM_URL WORKDIR SLUICE_BIN N PG_BASE_URL
# PG_BASE_URL is a server URL without a database, e.g. postgres://postgres@127.0.0.1:5432
set -euo pipefail
. "$(dirname "$0")/common.sh"
port=$1 upstream=$2 upstream_stream=$3 workroot=$4 bin=$5 n=$6 pg=$7
work="$workroot/sluice-cluster-$port"
db="bench_$port"
mkdir -p "$work/tmp"
rm -f "$workroot/sluice-$port.key"
psql "$pg/postgres" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
conf="$work/sluice-bench.toml"
bench_config "127.0.0.1:0" "$pg/$db" "$upstream" "$upstream_stream" > "$conf"
export SLUICE_ADMIN_TOKEN=bench-admin-token SLUICE_LOG=warn
"$bin" migrate --config "$conf" >/dev/null
pids=()
servers=""
# benches/rig.py reads this to sum the replicas' record counters and the database's figures.
seq -s ' ' $((port + 1)) $((port + n)) > "$workroot/sluice-$port.replicas"
echo "$db" >> "$workroot/sluice-$port.replicas"
for i in $(seq 1 "$n"); do
  p=$((port + i))
  "$bin" serve --config "$conf" --listen "127.0.0.1:$p" &
  pids+=($!)
  servers="$servers    server 127.0.0.1:$p;
"
done
cat > "$work/lb.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/lb.pid;
error_log $work/lb.error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $work/tmp/body;
  proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fcgi;
  uwsgi_temp_path $work/tmp/uwsgi;
  scgi_temp_path $work/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  upstream sluice {
$servers    keepalive 256;
  }
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / {
      proxy_pass http://sluice;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -p "$work" -c "$work/lb.conf" &
pids+=($!)
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' TERM INT
for i in $(seq 1 "$n"); do
  for _ in $(seq 1 400); do
    curl -fsS "http://127.0.0.1:$((port + i))/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
done
url="http://127.0.0.1:$((port + 1))"
"$bin" workspaces create bench --url "$url" >/dev/null
key=$("$bin" keys create --workspace bench --url "$url" 2>/dev/null)
echo "Authorization: Bearer $key" > "$workroot/sluice-$port.key"
wait
