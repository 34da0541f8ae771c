#!/usr/bin/env python3
"""How sluice's cost grows (issue 13): CPU per request as the prompt, the stream and the
tenants grow, beside a plain nginx proxy hop for the same bytes. Run by
`benches/overhead.sh --scaling`, which builds sluice and installs the tools first.

Points (every one a POST /v1/chat/completions with a valid key):

* body: a request body of 1 KB (a chat), 100 KB (a long chat) and 1 MB (a short chat
  whose user message has an `image_url` part with a `data:image/png;base64,…` URL), the
  answer the canned 800-byte completion;
* stream: a streamed answer of 10, 100 and 1 000 content chunks (plus the role, finish and
  usage chunks and `[DONE]`, as the rig's 40-chunk stream), a 200-byte request;
* tenants: a 200-byte request from keys of a database with 10 workspaces and 10 keys, with
  10 000 workspaces and 10 000 keys, and with 10 000 workspaces and 100 000 keys. `hot`
  sends every request with a key used a moment before (a key-cache hit); `cold` sends every
  request with a key not used before (a key-cache miss: one lookup in the database).
  Workspaces and keys are inserted straight into the SQLite file in the form
  `Store::create_workspace` / `Store::create_key` write them (the key's SHA-256 in hex),
  since the admin API creates one at a time behind the admin rate limit.

Two figures per point:

* `µs`: the target's CPU (utime+stime of its process tree, as run.py measures it) over a
  run, divided by the requests of the run, the record queue drained before the reading
  (as benches/rig.py does). The target alone on CPU 1, the load and the mock upstream on
  CPU 0. body and stream points are driven by oha (-z seconds, -c concurrency) like the
  rig; tenant points by a small asyncio client here (oha sends one fixed header), a fixed
  number of requests at the same concurrency.
* `instr`: instructions per request counted by `valgrind --tool=callgrind` on the same
  binary: the counters are zeroed, n1 requests sent, the records written, the counters
  dumped; again with n2 requests; (Ir(n2) − Ir(n1)) / (n2 − n1). Steady under other load.

Writes results.json and table.md to OUT/<UTC>-scaling/ and prints the table.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rig as sluice_rig  # noqa: E402  (benches/rig.py: the shared rig plus sluice's extras)

R = sluice_rig.rig  # the shared run.py
LO = R.LOOPBACK
CANNED = R.MOCK_DIR / "chat_completion.json"
ADMIN_TOKEN = "bench-admin-token"

BODY_POINTS = [("1 KB", 1_000, False), ("100 KB", 100_000, False), ("1 MB image", 1_000_000, True)]
STREAM_POINTS = [10, 100, 1000]
# (name, workspaces, keys)
TENANT_DBS = [("10 ws", 10, 10), ("10k ws", 10_000, 10_000), ("10k ws, 100k keys", 10_000, 100_000)]


def log(*a):
    print("[scaling]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Fixtures: request bodies, canned streams, keys
# --------------------------------------------------------------------------

def chat_body(model: str, size: int, image: bool, stream: bool = False) -> bytes:
    """A chat request of about `size` bytes: filler text in the user message, or (image) a
    data: URL of random base64 in an image_url part."""
    rnd = random.Random(size)
    d = {"model": model, "messages": [{"role": "system", "content": "You are a helpful assistant."}],
         "max_tokens": 64, "temperature": 0.2}
    if stream:
        d["stream"] = True
    base = len(json.dumps(d, separators=(",", ":")))
    if image:
        raw = bytes(rnd.getrandbits(8) for _ in range((size - base - 200) * 3 // 4))
        content = [{"type": "text", "text": "What is in this image?"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(raw).decode()}}]
    else:
        words = "the quick brown fox jumps over a lazy dog while sluice measures every call".split()
        text, n = [], 0
        target = max(size - base - 60, 10)
        while n < target:
            w = rnd.choice(words)
            text.append(w)
            n += len(w) + 1
        content = " ".join(text)[:target]
    d["messages"].append({"role": "user", "content": content})
    return json.dumps(d, separators=(",", ":")).encode()


def sse_stream(chunks: int) -> bytes:
    """A canned SSE answer like the rig's stream.sse with `chunks` content chunks."""
    head = {"id": "chatcmpl-mock000000000000000000000002", "object": "chat.completion.chunk",
            "created": 1763769600, "model": "mock-model-v1", "system_fingerprint": "fp_mock",
            "service_tier": "default"}

    def ev(delta, finish=None, usage=None, choices=True):
        d = dict(head)
        d["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []
        d["usage"] = usage
        return "data: " + json.dumps(d, separators=(",", ":")) + "\n\n"
    words = ["Hello!", " This", " is", " a", " canned", " reply", " from", " the", " mock", " upstream."]
    out = [ev({"role": "assistant", "content": "", "refusal": None})]
    out += [ev({"content": words[i % len(words)]}) for i in range(chunks)]
    out.append(ev({}, finish="stop"))
    out.append(ev(None, usage={"prompt_tokens": 28, "completion_tokens": chunks, "total_tokens": 28 + chunks},
                  choices=False))
    out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def key_of(i: int) -> str:
    return "sk-sluice-" + hashlib.sha256(f"scaling-{i}".encode()).hexdigest()[:32]


def seed_tenants(db: Path, workspaces: int, keys: int) -> None:
    """Inserts `workspaces` workspaces and `keys` keys (key i in workspace i mod workspaces)
    the way Store::create_workspace and Store::create_key store them (hash = SHA-256 hex)."""
    now = int(time.time() * 1000)
    con = sqlite3.connect(db, timeout=30)
    with con:
        con.executemany("INSERT INTO workspaces (id, created_at_ms) VALUES (?, ?)",
                        ((f"ws{w:05d}", now) for w in range(workspaces)))
        con.executemany(
            "INSERT INTO api_keys (id, workspace_id, key_hash, key_prefix, created_at_ms) VALUES (?, ?, ?, ?, ?)",
            ((f"key_s{i:07d}", f"ws{i % workspaces:05d}", hashlib.sha256(key_of(i).encode()).hexdigest(),
              key_of(i)[:14], now) for i in range(keys)))
    con.close()


def query_plan(db: Path) -> str:
    """SQLite's plan for the key lookup of Store::key_by_hash."""
    con = sqlite3.connect(db, timeout=30)
    rows = con.execute("EXPLAIN QUERY PLAN SELECT workspace_id, id FROM api_keys "
                       "WHERE key_hash = ? AND revoked_at_ms IS NULL", ("x",)).fetchall()
    con.close()
    return "; ".join(r[-1] for r in rows)


def records_written(db: Path) -> int:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM requests").fetchone()[0]
    finally:
        con.close()


# --------------------------------------------------------------------------
# Configs: the mock upstream, the nginx proxy, sluice
# --------------------------------------------------------------------------

def mock_conf(work: Path, port: int) -> Path:
    locs = "".join(f"""
    location = /st{n}/v1/chat/completions {{
      default_type text/event-stream;
      add_header Cache-Control no-cache;
      alias {work}/stream-{n}.sse;
      error_page 405 =200 $uri;
    }}""" for n in STREAM_POINTS)
    conf = work / "scaling-mock.conf"
    conf.write_text(R.nginx_common(work, "scaling-mock") + f"""
  etag off;
  if_modified_since off;
  max_ranges 0;
  client_max_body_size 8m;
  server {{
    listen {LO}:{port} backlog=4096;
    location = /v1/chat/completions {{
      default_type application/json;
      alias {CANNED};
      error_page 405 =200 $uri;
    }}{locs}
    location = /health {{ return 200 'ok'; }}
  }}
}}
""")
    return conf


def proxy_conf(work: Path, name: str, port: int, mock_port: int, single: bool = False) -> Path:
    """The rig's nginx proxy hop, with room for a 1 MB body in memory (its defaults refuse
    bodies over 1 MB and spool those over 16 KB to a file). `single`: no master process (for
    valgrind)."""
    conf = work / f"{name}.conf"
    common = R.nginx_common(work, name)
    if single:
        common = "master_process off;\n" + common
    conf.write_text(common + f"""
  client_max_body_size 8m;
  client_body_buffer_size 2m;
  upstream mock {{
    server {LO}:{mock_port};
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
  }}
  server {{
    listen {LO}:{port} backlog=4096;
    location / {{
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return conf


def sluice_conf(work: Path, name: str, port: int, mock_port: int) -> tuple[Path, Path]:
    """benches/common.sh's bench_config plus one route per stream length (`mock-stN`)."""
    db = work / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    up = f"http://{LO}:{mock_port}"
    parts = [f"""[server]
listen = "{LO}:{port}"
shutdown_grace_ms = 2000

[database]
url = "sqlite://{db}"
"""]
    for model, base in [("mock", f"{up}/v1")] + [(f"mock-st{n}", f"{up}/st{n}/v1") for n in STREAM_POINTS]:
        parts.append(f"""
[providers.{model}]
kind = "openai"
base_url = "{base}"
timeout_ms = 30000

[versions.{model}]
provider = "{model}"
model = "gpt-4o-mini"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}

[routes.{model}]
stable = "{model}"
""")
    conf = work / f"{name}.toml"
    conf.write_text("".join(parts))
    return conf, db


# --------------------------------------------------------------------------
# Load: oha (as the rig) and a small asyncio client for rotating keys
# --------------------------------------------------------------------------

def pin_gen():
    if CPUS_GEN:
        os.sched_setaffinity(0, CPUS_GEN)


def oha(url: str, body: Path, key: str | None, conc: int, seconds: float) -> dict:
    argv = [R.oha_bin(), "--no-tui", "--output-format", "json", "-c", str(conc), "-z", f"{seconds}s", "-w",
            "-m", "POST", "-H", "Content-Type: application/json", "-D", str(body)]
    if key:
        argv += ["-H", f"Authorization: Bearer {key}"]
    r = subprocess.run(argv + [url], capture_output=True, text=True, preexec_fn=pin_gen,
                       timeout=seconds + 120, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"oha failed rc={r.returncode}: {r.stderr[-500:]}")
    o = json.loads(r.stdout)
    codes = {str(k): v for k, v in (o.get("statusCodeDistribution") or {}).items()}
    errs = sum((o.get("errorDistribution") or {}).values())
    return {"ok": codes.get("200", 0), "errors": sum(v for k, v in codes.items() if k != "200") + errs,
            "elapsed_s": o["summary"]["total"]}


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
    if "content-length" in hdrs:
        await reader.readexactly(int(hdrs["content-length"]))
    elif hdrs.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _drive(port: int, path: str, body: bytes, keys: list[str], conc: int) -> tuple[int, int]:
    """Sends one request per entry of `keys` (that key in its Authorization header), `conc`
    at a time on keep-alive connections. Returns (200s, others)."""
    nxt, ok, bad = 0, 0, 0
    head = (f"POST {path} HTTP/1.1\r\nHost: {LO}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode()

    async def worker():
        nonlocal nxt, ok, bad
        reader, writer = await asyncio.open_connection(LO, port, limit=1 << 24)
        try:
            while nxt < len(keys):
                k = keys[nxt]
                nxt += 1
                writer.write(head + (f"Authorization: Bearer {k}\r\n\r\n" if k else "\r\n").encode() + body)
                status = await _read_response(reader)
                if status == 200:
                    ok += 1
                else:
                    bad += 1
        finally:
            writer.close()
    await asyncio.gather(*(worker() for _ in range(min(conc, len(keys)))))
    return ok, bad


def drive(port: int, path: str, body: bytes, keys: list[str], conc: int) -> dict:
    t0 = time.monotonic()
    ok, bad = asyncio.run(_drive(port, path, body, keys, conc))
    return {"ok": ok, "errors": bad, "elapsed_s": time.monotonic() - t0}


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------

class Target:
    """A started nginx proxy or sluice (maybe under valgrind), with its key (sluice)."""

    def __init__(self, name: str, port: int, proc, db: Path | None = None):
        self.name, self.port, self.proc, self.db = name, port, proc, db
        self.key = key_of(0) if db else None
        self.records = 0  # records expected in the database (sluice)

    def url(self, path: str) -> str:
        return f"http://{LO}:{self.port}{path}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        t0 = time.monotonic()
        path = "/healthz" if self.db else "/health"
        while time.monotonic() - t0 < timeout:
            if not self.proc.alive():
                raise SystemExit(f"{self.name} exited:\n{self.proc.tail()}")
            try:
                with urllib.request.urlopen(self.url(path), timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout}s")

    def drained(self, timeout: float = 120.0) -> None:
        """Waits until every record of the requests sent so far is in the database."""
        if not self.db:
            return
        t0 = time.monotonic()
        while records_written(self.db) < self.records:
            if time.monotonic() - t0 > timeout:
                log(f"WARNING {self.name}: {records_written(self.db)} of {self.records} records after {timeout}s")
                return
            time.sleep(0.05)


def start_sluice(args, work: Path, name: str, port: int, mock_port: int, workspaces: int, keys: int,
                 valgrind: bool = False) -> Target:
    conf, db = sluice_conf(work, name, port, mock_port)
    argv = [args.bin, "serve", "--config", str(conf)]
    if valgrind:
        argv = valgrind_argv(work, name) + argv
    p = R.Proc(name, argv, work, env={"SLUICE_ADMIN_TOKEN": ADMIN_TOKEN, "SLUICE_LOG": "warn"},
               cpus=CPUS_TARGET)
    p.start()
    t = Target(name, port, p, db)
    t.wait_ready()
    seed_tenants(db, workspaces, keys)
    return t


def start_nginx_proxy(work: Path, name: str, port: int, mock_port: int, valgrind: bool = False) -> Target:
    conf = proxy_conf(work, name, port, mock_port, single=valgrind)
    argv = [R.nginx_bin(), "-p", str(work), "-c", str(conf)]
    if valgrind:
        argv = valgrind_argv(work, name) + argv
    p = R.Proc(name, argv, work, cpus=CPUS_TARGET)
    p.start()
    t = Target(name, port, p)
    t.wait_ready()
    return t


def valgrind_argv(work: Path, name: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={work}/cg-{name}.%p.out",
            "--dump-instr=no", "--collect-systime=no"]


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------

def cpu_run(t: Target, load) -> dict:
    """CPU µs per request of `t` over `load()` (which returns ok/errors/elapsed), the records
    drained before the second reading."""
    c0 = R.tree_cpu_s(t.proc.pid)
    lm = R.LoadMeter()
    o = load()
    t.records += o["ok"]
    t.drained(timeout=15)
    foreign = lm.foreign_cores()
    c1 = R.tree_cpu_s(t.proc.pid)
    n = max(o["ok"] + o["errors"], 1)
    return {"requests": n, "errors": o["errors"], "rps": o["ok"] / o["elapsed_s"] if o["elapsed_s"] else None,
            "cpu_us_per_req": (c1 - c0) / n * 1e6, "other_load": foreign}


def callgrind_ir(t: Target, load) -> int:
    """Instructions `t` executes over `load()`: zero, load, records drained, dump, read."""
    pid = t.proc.pid
    t.drained()
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=120)
    o = load()
    if o["errors"]:
        log(f"WARNING {t.name}: {o['errors']} errors under callgrind")
    t.records += o["ok"]
    t.drained()
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=120)
    dumps = sorted(WORK.glob(f"cg-{t.name}.{pid}.out.*"), key=lambda p: p.stat().st_mtime)
    text = dumps[-1].read_text(errors="replace")
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no totals in {dumps[-1]}")
    return int(m.group(1))


def per_request(t: Target, make_load, n1: int, n2: int) -> float:
    """(Ir(n2) − Ir(n1)) / (n2 − n1): the instructions of one more request."""
    a = callgrind_ir(t, make_load(n1, 0))
    b = callgrind_ir(t, make_load(n2, n1))
    return (b - a) / (n2 - n1)


# --------------------------------------------------------------------------
# The matrix
# --------------------------------------------------------------------------

def fixtures(work: Path) -> dict:
    f = {}
    for label, size, image in BODY_POINTS:
        p = work / f"body-{size}.json"
        p.write_bytes(chat_body("mock", size, image))
        f[label] = p
    for n in STREAM_POINTS:
        (work / f"stream-{n}.sse").write_bytes(sse_stream(n))
        p = work / f"body-st{n}.json"
        p.write_bytes(chat_body(f"mock-st{n}", 200, False, stream=True))
        f[f"st{n}"] = p
    p = work / "body-small.json"
    p.write_bytes(chat_body("mock", 200, False))
    f["small"] = p
    return f


def bytes_points(fx: dict) -> list[dict]:
    """(point, path, body file, answer bytes) of the body and stream points."""
    pts = [{"group": "body", "point": label, "path": "/v1/chat/completions", "body": fx[label],
            "x": size} for label, size, _ in BODY_POINTS]
    pts += [{"group": "stream", "point": f"{n} chunks", "path": f"/st{n}/v1/chat/completions",
             "sluice_path": "/v1/chat/completions", "body": fx[f"st{n}"], "x": n} for n in STREAM_POINTS]
    return pts


def rig_bytes(args, fx, mock_port) -> list[dict]:
    rows = []
    nginx = start_nginx_proxy(WORK, "scaling-nginx", args.base_port + 1, mock_port)
    sl = start_sluice(args, WORK, "scaling-sluice", args.base_port + 2, mock_port, 1, 1)
    try:
        for pt in bytes_points(fx):
            for t in (nginx, sl):
                path = pt.get("sluice_path", pt["path"]) if t is sl else pt["path"]
                t.records += oha(t.url(path), pt["body"], t.key, args.conc, args.warmup)["ok"]
                r = cpu_run(t, lambda t=t, path=path: oha(t.url(path), pt["body"], t.key, args.conc, args.duration))
                r.update(group=pt["group"], point=pt["point"], x=pt["x"], target="nginx" if t is nginx else "sluice")
                rows.append(r)
                log(f"{pt['group']:6s} {pt['point']:11s} {r['target']:6s} {r['cpu_us_per_req']:8.1f} µs/req "
                    f"({r['requests']} req, {r['errors']} err, other load {r['other_load']:.2f})")
    finally:
        nginx.proc.stop()
        sl.proc.stop()
    return rows


def tenant_plan(keys: int, n: int) -> list[tuple[str, list[int]]]:
    """(kind, key indices) of the runs of one database: a cold run (keys never used) then a
    hot run (the same keys again, within the key cache's 30 s)."""
    if keys < n:  # the small database: every request from one of its keys, all hot
        return [("hot", [i % keys for i in range(n)])]
    return [("cold", list(range(n))), ("hot", list(range(n)))]


def rig_tenants(args, fx, mock_port) -> list[dict]:
    rows = []
    body = fx["small"].read_bytes()
    n = args.tenant_requests
    for i, (label, ws, keys) in enumerate(TENANT_DBS):
        sl = start_sluice(args, WORK, f"scaling-tenants-{i}", args.base_port + 3 + i, mock_port, ws, keys)
        try:
            warm = [(keys - 1 - j) % keys for j in range(min(2_000, max(keys - n, 0)) or 2_000)]
            sl.records += drive(sl.port, "/v1/chat/completions", body, [key_of(k) for k in warm], args.conc)["ok"]
            sl.drained()
            for kind, idx in tenant_plan(keys, n):
                ks = [key_of(k) for k in idx]
                r = cpu_run(sl, lambda ks=ks: drive(sl.port, "/v1/chat/completions", body, ks, args.conc))
                r.update(group="tenants", point=f"{label}, {kind}", x=keys, target="sluice", workspaces=ws,
                         keys=keys, kind=kind)
                rows.append(r)
                log(f"tenants {r['point']:24s} {r['cpu_us_per_req']:8.1f} µs/req ({r['requests']} req, "
                    f"{r['errors']} err, {r['rps']:.0f} req/s, other load {r['other_load']:.2f})")
        finally:
            sl.proc.stop()
    return rows


def cg_bytes(args, fx, mock_port) -> list[dict]:
    rows = []
    nginx = start_nginx_proxy(WORK, "cg-nginx", args.base_port + 11, mock_port, valgrind=True)
    sl = start_sluice(args, WORK, "cg-sluice", args.base_port + 12, mock_port, 1, 1, valgrind=True)
    try:
        for pt in bytes_points(fx):
            body = pt["body"].read_bytes()
            # fewer of the long ones: a 1 MB body or a 1 000-chunk answer is ~10⁷ instructions
            big = len(body) > 50_000 or (pt["group"] == "stream" and pt["x"] >= 1000)
            n1, n2 = (10, 40) if big else (args.cg_n1, args.cg_n2)
            for t in (nginx, sl):
                path = pt.get("sluice_path", pt["path"]) if t is sl else pt["path"]

                def make(n, _off, t=t, path=path, body=body):
                    return lambda: drive(t.port, path, body, [t.key] * n, 4)
                t.records += make(n1, 0)()["ok"]  # warm this point's code and buffers
                ir = per_request(t, make, n1, n2)
                rows.append({"group": pt["group"], "point": pt["point"], "x": pt["x"],
                             "target": "nginx" if t is nginx else "sluice", "instr_per_req": ir, "n1": n1, "n2": n2})
                log(f"callgrind {pt['group']:6s} {pt['point']:11s} {rows[-1]['target']:6s} {ir:12.0f} instr/req")
    finally:
        nginx.proc.stop()
        sl.proc.stop()
    return rows


def cg_tenants(args, fx, mock_port) -> list[dict]:
    rows = []
    body = fx["small"].read_bytes()
    n1, n2 = args.cg_n1, args.cg_n2
    for i, (label, ws, keys) in enumerate(TENANT_DBS):
        sl = start_sluice(args, WORK, f"cg-tenants-{i}", args.base_port + 13 + i, mock_port, ws, keys,
                          valgrind=True)
        try:
            warm = [key_of((keys - 1 - j) % keys) for j in range(min(n1, keys))]
            sl.records += drive(sl.port, "/v1/chat/completions", body, warm * max(1, n1 // len(warm)), 4)["ok"]
            kinds = ["hot"] if keys < n1 + n2 else ["cold", "hot"]
            for kind in kinds:
                if kind == "hot" and keys < n1 + n2:
                    def make(n, _off):
                        return lambda: drive(sl.port, "/v1/chat/completions", body,
                                             [key_of(j % keys) for j in range(n)], 4)
                elif kind == "cold":
                    # n1 keys, then n2 others: none used before (a miss each)
                    def make(n, off):
                        return lambda: drive(sl.port, "/v1/chat/completions", body,
                                             [key_of(off + j) for j in range(n)], 4)
                else:
                    # the keys the cold runs just used (hits within the cache's 30 s)
                    def make(n, _off):
                        return lambda: drive(sl.port, "/v1/chat/completions", body,
                                             [key_of(n1 + j % n2) for j in range(n)], 4)
                ir = per_request(sl, make, n1, n2)
                rows.append({"group": "tenants", "point": f"{label}, {kind}", "x": keys, "target": "sluice",
                             "instr_per_req": ir, "n1": n1, "n2": n2, "workspaces": ws, "keys": keys, "kind": kind})
                log(f"callgrind tenants {rows[-1]['point']:24s} {ir:12.0f} instr/req")
            if i == len(TENANT_DBS) - 1:
                rows.append({"group": "plan", "plan": query_plan(sl.db)})
        finally:
            sl.proc.stop()
    return rows


# --------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------

def merge(rig_rows: list[dict], cg_rows: list[dict]) -> list[dict]:
    out = {}
    for r in rig_rows + cg_rows:
        if r["group"] == "plan":
            continue
        k = (r["group"], r["point"], r["target"])
        out.setdefault(k, {"group": r["group"], "point": r["point"], "target": r["target"], "x": r["x"]}).update(r)
    return list(out.values())


def slope(rows: list[dict], target: str, group: str, key: str, scale: float) -> float | None:
    """Least-squares growth of `key` per `scale` units of x over the group's points."""
    pts = [(r["x"], r[key]) for r in rows if r["group"] == group and r["target"] == target and r.get(key) is not None]
    if len(pts) < 2:
        return None
    mx = statistics.mean(x for x, _ in pts)
    my = statistics.mean(y for _, y in pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den * scale if den else None


def render(meta: dict, rows: list[dict], plan: str | None) -> str:
    f = R.fmt
    out = [f"# scaling {meta['utc']} {meta['label']}\n",
           f"{meta['cpus']} CPUs ({meta['cpu_model']}); sluice {meta['version']}; {meta['oha']}; nginx {meta['nginx']}; "
           f"body and stream points: oha -c {meta['conc']} -z {meta['duration']}s per target; tenant points: "
           f"{meta['tenant_requests']} requests at concurrency {meta['conc']} (asyncio client); instructions: "
           f"callgrind, (Ir(n2) − Ir(n1)) / (n2 − n1), n1/n2 = {meta['cg_n1']}/{meta['cg_n2']} requests "
           f"(10/40 for the 100 KB and 1 MB bodies and the 1 000-chunk answer); wall {meta['wall_s']} s\n"]
    out.append("| group | point | sluice CPU µs/req | nginx CPU µs/req | sluice instr/req | nginx instr/req "
               "| sluice req/s | other load (cores) |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    seen = []
    for r in rows:
        if (r["group"], r["point"]) in seen:
            continue
        seen.append((r["group"], r["point"]))
        s = next((x for x in rows if x["group"] == r["group"] and x["point"] == r["point"] and x["target"] == "sluice"), {})
        n = next((x for x in rows if x["group"] == r["group"] and x["point"] == r["point"] and x["target"] == "nginx"), {})
        kilo = lambda v: None if v is None else f"{v / 1000:,.0f} k".replace(",", " ")  # noqa: E731
        out.append(f"| {r['group']} | {r['point']} | {f(s.get('cpu_us_per_req'), 1)} | {f(n.get('cpu_us_per_req'), 1)} | "
                   f"{kilo(s.get('instr_per_req')) or '-'} | {kilo(n.get('instr_per_req')) or '-'} | "
                   f"{f(s.get('rps'), 0)} | {f(s.get('other_load'), 2)} |")
    out.append("\nGrowth (least squares over the group's points):\n")
    out.append("| growth | sluice CPU µs | nginx CPU µs | sluice instr | nginx instr |")
    out.append("|---|---:|---:|---:|---:|")
    for group, unit, scale in (("body", "per KB of request body", 1000.0), ("stream", "per chunk of answer", 1.0)):
        vals = [slope(rows, t, group, k, scale) for t, k in (("sluice", "cpu_us_per_req"), ("nginx", "cpu_us_per_req"),
                                                               ("sluice", "instr_per_req"), ("nginx", "instr_per_req"))]
        out.append(f"| {unit} | {f(vals[0], 3)} | {f(vals[1], 3)} | {f(vals[2], 0)} | {f(vals[3], 0)} |")
    if plan:
        out.append(f"\nKey lookup (`Store::key_by_hash`), SQLite EXPLAIN QUERY PLAN on the 100 000-key database: `{plan}`")
    return "\n".join(out)


CPUS_TARGET: set[int] | None = {1}
CPUS_GEN: set[int] | None = {0}
WORK = Path(".")


def main():
    global WORK, CPUS_TARGET, CPUS_GEN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the sluice binary")
    ap.add_argument("--version", default="?", help="version string for the table")
    ap.add_argument("--out", required=True, help="results dir; the run goes to OUT/<UTC>-scaling/")
    ap.add_argument("--workdir", default=os.environ.get("BENCH_WORKDIR", "/tmp/sluice-scaling"))
    ap.add_argument("--only", default="body,stream,tenants", help="groups to run (default all three)")
    ap.add_argument("--no-rig", action="store_true", help="only the callgrind counts")
    ap.add_argument("--no-callgrind", action="store_true", help="only the CPU µs figures")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per oha run (default 8)")
    ap.add_argument("--warmup", type=float, default=1.0, help="oha warm-up seconds per point and target (default 1)")
    ap.add_argument("--conc", type=int, default=16, help="concurrency (default 16)")
    ap.add_argument("--tenant-requests", type=int, default=8_000, help="requests per tenant run (default 8000)")
    ap.add_argument("--cg-n1", type=int, default=100, help="callgrind: requests of the first count (default 100)")
    ap.add_argument("--cg-n2", type=int, default=400, help="callgrind: requests of the second count (default 400)")
    ap.add_argument("--base-port", type=int, default=18200)
    ap.add_argument("--pin", choices=["split", "none"], default="split",
                    help="split (default): targets on CPU 1, load and mock on CPU 0")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.pin == "none" or (os.cpu_count() or 1) < 2:
        CPUS_TARGET = CPUS_GEN = None
    groups = set(args.only.split(","))

    ts = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    WORK = Path(args.workdir) / f"scaling-{ts}"
    WORK.mkdir(parents=True, exist_ok=True)
    fx = fixtures(WORK)
    mock_port = args.base_port
    t_begin = time.monotonic()
    rig_rows, cg_rows = [], []
    try:
        mock = R.Proc("scaling-mock", [R.nginx_bin(), "-p", str(WORK), "-c", str(mock_conf(WORK, mock_port))],
                      WORK, cpus=CPUS_GEN)
        mock.start()
        Target("mock", mock_port, mock).wait_ready(20)
        if not args.no_rig:
            if groups & {"body", "stream"}:
                rig_rows += [r for r in rig_bytes(args, fx, mock_port) if r["group"] in groups]
            if "tenants" in groups:
                rig_rows += rig_tenants(args, fx, mock_port)
        if not args.no_callgrind:
            if groups & {"body", "stream"}:
                cg_rows += [r for r in cg_bytes(args, fx, mock_port) if r["group"] in groups]
            if "tenants" in groups:
                cg_rows += cg_tenants(args, fx, mock_port)
    finally:
        R.stop_all()
    plan = next((r["plan"] for r in cg_rows if r["group"] == "plan"), None)
    rows = merge(rig_rows, cg_rows)
    meta = {"utc": ts, "label": args.label, "version": args.version, "cpus": os.cpu_count(),
            "cpu_model": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                               if ln.startswith("model name")), "?"),
            "oha": R.oha_version(), "nginx": R.nginx_version(), "conc": args.conc, "duration": args.duration,
            "tenant_requests": args.tenant_requests, "cg_n1": args.cg_n1, "cg_n2": args.cg_n2,
            "wall_s": round(time.monotonic() - t_begin, 1), "argv": sys.argv[1:]}
    table = render(meta, rows, plan)
    outdir = Path(args.out) / f"{ts}-scaling"
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "plan": plan,
                                                     "raw": rig_rows + cg_rows}, indent=1))
    (outdir / "table.md").write_text(table + "\n")
    print(table)
    log(f"results: {outdir}")


if __name__ == "__main__":
    main()
