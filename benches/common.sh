# Shared by benches/overhead.sh, benches/cluster.sh and their target scripts (sourced).

# Finds the shared rig (run.py) beside the repository (or a worktree one level further
# down), sets BENCH_RIG, BENCH_TOOLS and BENCH_WORKDIR, and installs nginx (apt) and oha
# (cargo install, pinned) on first use. $1 names the caller in messages.
bench_setup() {
  local who=$1
  if [ -z "${BENCH_RIG:-}" ]; then
    for rig in "$ROOT/../shared/bench" "$ROOT/../../shared/bench"; do
      if [ -f "$rig/run.py" ]; then BENCH_RIG=$(cd "$rig" && pwd); break; fi
    done
  fi
  [ -f "${BENCH_RIG:-}/run.py" ] || { echo "no bench rig: set BENCH_RIG to the directory of run.py" >&2; exit 1; }
  export BENCH_RIG
  export BENCH_TOOLS=${BENCH_TOOLS:-$HOME/.cache/sluice-bench}
  export BENCH_WORKDIR=${BENCH_WORKDIR:-$ROOT/target/bench-work}
  # The peers where `../shared/bench/setup.sh` puts them by default ($BENCH_RIG/.tools),
  # unless they were installed into $BENCH_TOOLS or named explicitly.
  local rig_tools=$BENCH_RIG/.tools
  if [ ! -x "$BENCH_TOOLS/litellm-venv/bin/litellm" ] && [ -x "$rig_tools/litellm-venv/bin/litellm" ]; then
    export BENCH_LITELLM_VENV=${BENCH_LITELLM_VENV:-$rig_tools/litellm-venv}
  fi
  local portkey=portkey/node_modules/@portkey-ai/gateway
  if [ ! -d "$BENCH_TOOLS/$portkey" ] && [ -d "$rig_tools/$portkey" ]; then
    export BENCH_PORTKEY_DIR=${BENCH_PORTKEY_DIR:-$rig_tools/$portkey}
  fi
  mkdir -p "$BENCH_TOOLS" "$BENCH_WORKDIR"
  bench_nginx
  if ! "$BENCH_TOOLS/cargo/bin/oha" --version 2>/dev/null | grep -q 1.16.0; then
    echo "[$who] building oha 1.16.0 (a few minutes)" >&2
    cargo install oha --version 1.16.0 --locked --root "$BENCH_TOOLS/cargo"
  fi
}

# Installs nginx (apt) unless it is there: the rig's mock and the floor it is compared to.
bench_nginx() {
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  fi
}

# Prints the path of the sluice to measure: $SLUICE_BIN when set (a build made elsewhere,
# e.g. the same code in another target directory), else the production build of this
# checkout, built first.
bench_binary() {
  if [ -n "${SLUICE_BIN:-}" ]; then
    realpath "$SLUICE_BIN"
  else
    (cd "$ROOT" && cargo build --profile production --quiet) >&2 || return 1
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/production/sluice"
  fi
}

# Prints a sluice config for the rig: `mock` → the canned upstream, `mock-stream` → its
# streaming path, both routes with ROUTE_EXTRA appended (e.g. a guardrails line).
#   bench_config LISTEN DATABASE_URL UPSTREAM_URL UPSTREAM_STREAM_URL [ROUTE_EXTRA]
bench_config() {
  cat <<CONF
[server]
listen = "$1"
shutdown_grace_ms = 2000

[database]
url = "$2"

[providers.up]
kind = "openai"
base_url = "$3"
timeout_ms = 30000

[providers.up-stream]
kind = "openai"
base_url = "$4"
timeout_ms = 30000

[versions.mock]
provider = "up"
model = "gpt-4o-mini"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[versions.mock-stream]
provider = "up-stream"
model = "gpt-4o-mini"
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[routes.mock]
stable = "mock"
${5:-}

[routes.mock-stream]
stable = "mock-stream"
${5:-}
CONF
}

# Prints an nginx config that serves the shared rig's canned answers on 127.0.0.1:PORT,
# one worker, as the mock upstream: /v1/chat/completions (plain) and /stream/v1/… (a
# 40-chunk stream). WORK holds its pid, logs and temp files.
#   bench_mock_conf WORK PORT MOCK_DIR
bench_mock_conf() {
  cat <<CONF
worker_processes 1;
daemon off;
pid $1/mock.pid;
error_log $1/mock.error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $1/tmp/body;
  proxy_temp_path $1/tmp/proxy;
  fastcgi_temp_path $1/tmp/fcgi;
  uwsgi_temp_path $1/tmp/uwsgi;
  scgi_temp_path $1/tmp/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  etag off;
  server {
    listen 127.0.0.1:$2;
    location = /v1/chat/completions {
      default_type application/json;
      alias $3/chat_completion.json;
      error_page 405 =200 \$uri;
    }
    location = /stream/v1/chat/completions {
      default_type text/event-stream;
      alias $3/stream.sse;
      error_page 405 =200 \$uri;
    }
  }
}
CONF
}

# Copies a guardrail policy file (if any) into WORK/policies/guardrails/bench.toml and
# prints the route line that turns it on (nothing without a file), for bench_config.
#   route_extra=$(bench_guardrails WORK [POLICY_FILE])
bench_guardrails() {
  [ -n "${2:-}" ] || return 0
  mkdir -p "$1/policies/guardrails"
  cp "$2" "$1/policies/guardrails/bench.toml"
  echo 'guardrails = "bench"'
}

# Waits (up to 10 s) for sluice at URL to answer /healthz, creates the workspace `bench`
# and prints a new key of it. Needs SLUICE_ADMIN_TOKEN.
#   key=$(bench_key URL SLUICE_BIN)
bench_key() {
  for _ in $(seq 1 200); do
    curl -fsS "$1/healthz" >/dev/null 2>&1 && break
    sleep 0.05
  done
  "$2" workspaces create bench --url "$1" >/dev/null
  "$2" keys create --workspace bench --url "$1" 2>/dev/null
}
