#!/usr/bin/env python3
"""The shared rig (run.py in BENCH_RIG) plus what sluice needs reported, without changing it.

After every measured run of a target that serves sluice's /metrics, this adds to the row:

* the target's CPU per request split by thread: `db` = SQLite's worker threads (sqlx names
  them sqlx-sqlite-worker-N; the record writer is their only busy user under load), `tokio`
  = the runtime's threads (its workers, or the main thread where sluice runs the
  single-threaded runtime on one CPU: the request path, and the writer's side of the record
  stream), `rest` = everything else in the process tree (the main thread of a multi-threaded
  runtime, exited threads, the wrapper shell);
* the records sluice dropped during the run (`sluice_records_dropped_total`, which counts
  the queue-full drops and the batches the database refused) and written;
* how long after the load stopped the record queue took to drain (written + dropped caught up
  with the requests of the run), polled every 20 ms for up to 10 s. The rig takes its CPU
  reading after this, so the CPU figures include the writes that finish after the load.

For a cluster target (benches/sluice-cluster-target.sh, which writes
{workdir}/sluice-PORT.replicas), the record counters are summed over the replicas, nginx (the
load balancer in the tree) is split out of the CPU, and the run adds PostgreSQL's figures for
the target's database: transactions (reads and writes; pg_stat_statements is not loaded on
the machine's server, so statements are bounded by these), rows inserted and updated, WAL
bytes (pg_stat_wal, server-wide), and the CPU of every postgres process per request.

Everything else (arguments, tables, results.json) is run.py's; the extra columns are printed
as a second table and stored in results.json as `sluice_*` keys of each row.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RIG = Path(os.environ["BENCH_RIG"]).resolve()
spec = importlib.util.spec_from_file_location("bench_run", RIG / "run.py")
rig = importlib.util.module_from_spec(spec)
sys.modules["bench_run"] = rig
spec.loader.exec_module(rig)

DRAIN_TIMEOUT_S = 10.0


def thread_cpu(root: int) -> dict[str, float]:
    """CPU seconds (utime+stime) per thread group over the live process tree of `root`."""
    groups = {"db": 0.0, "tokio": 0.0, "lb": 0.0, "total": 0.0}
    for pid in rig.proc_tree(root):
        f = rig._stat_fields(pid)
        if f:
            cpu = (int(f[11]) + int(f[12])) / rig.CLK_TCK
            groups["total"] += cpu
            if proc_comm(pid) == "nginx":
                groups["lb"] += cpu
                continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                s = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except OSError:
                continue
            comm = s[s.find("(") + 1:s.rfind(")")]
            rest = s[s.rfind(")") + 2:].split()
            cpu = (int(rest[11]) + int(rest[12])) / rig.CLK_TCK
            if comm.startswith("sqlx-sqlite"):
                groups["db"] += cpu
            elif comm.startswith("tokio-rt-worker") or (tid == str(pid) and comm.startswith("sluice")):
                # On one CPU sluice runs tokio's single-threaded runtime on its main thread.
                groups["tokio"] += cpu
    return groups


def user_sys(root: int) -> tuple[float, float]:
    """CPU seconds in user space and in the kernel (utime, stime; all threads) over the live
    process tree of `root`: what each hop costs in its own code and in the kernel's."""
    user = sys_ = 0.0
    for pid in rig.proc_tree(root):
        f = rig._stat_fields(pid)
        if f:
            user += int(f[11]) / rig.CLK_TCK
            sys_ += int(f[12]) / rig.CLK_TCK
    return user, sys_


def proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cluster_of(ctx, t) -> tuple[list[int], str] | None:
    """(replica ports, database name) of a cluster target, or None."""
    f = Path(ctx.work) / f"sluice-{t.port}.replicas"
    if not f.exists():
        return None
    ports, db = f.read_text().split("\n")[:2]
    return [int(p) for p in ports.split()], db.strip()


def sluice_counters(t, ports: list[int] | None = None) -> dict[str, float] | None:
    """sluice's record counters from /metrics (summed over `ports`), or None when the target
    is not sluice."""
    out = {"sluice_records_written_total": 0.0, "sluice_records_dropped_total": 0.0}
    for port in ports or [t.port]:
        url = f"http://{rig.LOOPBACK}:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except Exception:  # noqa: BLE001 - any target without sluice's /metrics
            return None
        for name in out:
            m = re.search(rf"^{name} (\S+)$", text, re.M)
            if not m:
                return None
            out[name] += float(m.group(1))
    return out


PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")


def pg_figures(db: str) -> dict[str, float]:
    """The database's counters now, and every postgres process's CPU seconds."""
    q = ("SELECT d.xact_commit + d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted, w.wal_bytes "
         f"FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = '{db}'")
    r = subprocess.run(["psql", f"{PG}/postgres", "-tAF", " ", "-c", q], capture_output=True, text=True)
    vals = [float(x) for x in r.stdout.split()] if r.returncode == 0 and r.stdout.strip() else [0.0] * 5
    cpu = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit() and proc_comm(int(d)) == "postgres":
            f = rig._stat_fields(int(d))
            if f:
                cpu += (int(f[11]) + int(f[12])) / rig.CLK_TCK
    return dict(zip(("xacts", "inserted", "updated", "deleted", "wal_bytes"), vals), cpu_s=cpu)


_orig_run_oha = rig.run_oha
_orig_summarize = rig.summarize


def run_oha(ctx, t, stream, conc, seconds):
    cluster = cluster_of(ctx, t) if t.proc else None
    ports = cluster[0] if cluster else None
    m0 = sluice_counters(t, ports) if t.proc else None
    cpu0 = thread_cpu(t.proc.pid) if m0 is not None else None
    pg0 = pg_figures(cluster[1]) if cluster else None
    us0 = user_sys(t.proc.pid) if t.proc else None
    o = _orig_run_oha(ctx, t, stream, conc, seconds)
    if us0 is not None:
        us1 = user_sys(t.proc.pid)
        o["_user_sys"] = (us1[0] - us0[0], us1[1] - us0[1])
    if m0 is None:
        return o
    ok = sum(v for k, v in (o.get("statusCodeDistribution") or {}).items() if str(k) == "200")
    t_end = time.monotonic()
    expect = m0["sluice_records_written_total"] + m0["sluice_records_dropped_total"] + ok
    m1, drain_s = sluice_counters(t, ports), None
    while m1 is not None:
        done = m1["sluice_records_written_total"] + m1["sluice_records_dropped_total"]
        if done >= expect:
            drain_s = time.monotonic() - t_end
            break
        if time.monotonic() - t_end > DRAIN_TIMEOUT_S:
            break
        time.sleep(0.02)
        m1 = sluice_counters(t, ports)
    cpu1 = thread_cpu(t.proc.pid)
    if cluster:
        # PostgreSQL publishes a backend's counters at most once a second.
        time.sleep(1.5)
        pg1 = pg_figures(cluster[1])
        o["_pg"] = {k: pg1[k] - pg0[k] for k in pg1}
        o["_pg"]["replicas"] = len(ports)
    o["_sluice"] = {
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "dropped": (m1 or m0)["sluice_records_dropped_total"] - m0["sluice_records_dropped_total"],
        "written": (m1 or m0)["sluice_records_written_total"] - m0["sluice_records_written_total"],
        "drain_s": drain_s,
    }
    return o


def summarize(o):
    r = _orig_summarize(o)
    if o.get("_user_sys"):
        n = max(r["requests"], 1)
        r["user_cpu_us_per_req"] = o["_user_sys"][0] / n * 1e6
        r["sys_cpu_us_per_req"] = o["_user_sys"][1] / n * 1e6
    x = o.get("_sluice")
    if x:
        n = max(r["requests"], 1)
        cpu = x["cpu_s"]
        r["sluice_db_cpu_us_per_req"] = cpu["db"] / n * 1e6
        r["sluice_tokio_cpu_us_per_req"] = cpu["tokio"] / n * 1e6
        r["sluice_rest_cpu_us_per_req"] = (cpu["total"] - cpu["db"] - cpu["tokio"] - cpu["lb"]) / n * 1e6
        r["sluice_records_dropped"] = x["dropped"]
        r["sluice_records_written"] = x["written"]
        r["sluice_drain_s"] = x["drain_s"]
        r["sluice_lb_cpu_us_per_req"] = cpu["lb"] / n * 1e6
    pg = o.get("_pg")
    if pg:
        n = max(r["requests"], 1)
        r["pg_replicas"] = pg["replicas"]
        r["pg_xacts_per_100_req"] = pg["xacts"] / n * 100
        r["pg_xacts_per_100_req_per_replica"] = pg["xacts"] / n * 100 / pg["replicas"]
        r["pg_rows_per_req"] = (pg["inserted"] + pg["updated"] + pg["deleted"]) / n
        r["pg_wal_bytes_per_req"] = pg["wal_bytes"] / n
        r["pg_cpu_us_per_req"] = pg["cpu_s"] / n * 1e6
    return r


_orig_render = rig.render_tables


def render_tables(meta, rows, targets_info):
    out = [_orig_render(meta, rows, targets_info)]
    split = [r for r in rows if "user_cpu_us_per_req" in r]
    if split:
        f = rig.fmt
        out.append("\n### CPU per request in user space and in the kernel (utime / stime, whole process tree)\n")
        out.append("| target | round | case | requests | user µs/req | kernel µs/req |")
        out.append("|---|---|---|---|---|---|")
        for r in split:
            out.append(f"| {r['target']} | {r['round']} | {r['case']} | {r['requests']} | "
                       f"{f(r['user_cpu_us_per_req'], 1)} | {f(r['sys_cpu_us_per_req'], 1)} |")
    ours = [r for r in rows if "sluice_db_cpu_us_per_req" in r]
    if ours:
        f = rig.fmt
        out.append("\n### sluice: CPU per request by thread, and the record stream\n")
        out.append("| target | round | case | requests | CPU µs/req (all) | of which nginx LB | db threads | runtime threads | rest "
                   "| records written | records dropped | queue drained after s |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in ours:
            out.append(f"| {r['target']} | {r['round']} | {r['case']} | {r['requests']} | "
                       f"{f(r.get('target_cpu_us_per_req'), 1)} | {f(r.get('sluice_lb_cpu_us_per_req'), 1)} | "
                       f"{f(r['sluice_db_cpu_us_per_req'], 1)} | "
                       f"{f(r['sluice_tokio_cpu_us_per_req'], 1)} | {f(r['sluice_rest_cpu_us_per_req'], 1)} | "
                       f"{int(r['sluice_records_written'])} | {int(r['sluice_records_dropped'])} | "
                       f"{f(r['sluice_drain_s'], 2) if r['sluice_drain_s'] is not None else 'not within 10 s'} |")
    pgs = [r for r in rows if "pg_replicas" in r]
    if pgs:
        f = rig.fmt
        out.append("\n### PostgreSQL per request (cluster targets)\n")
        out.append("| target | round | case | replicas | requests | transactions /100 req | per replica | rows written /req "
                   "| WAL bytes /req | postgres CPU µs/req |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in pgs:
            out.append(f"| {r['target']} | {r['round']} | {r['case']} | {r['pg_replicas']} | {r['requests']} | "
                       f"{f(r['pg_xacts_per_100_req'], 3)} | {f(r['pg_xacts_per_100_req_per_replica'], 3)} | "
                       f"{f(r['pg_rows_per_req'], 2)} | {f(r['pg_wal_bytes_per_req'], 0)} | {f(r['pg_cpu_us_per_req'], 1)} |")
    return "\n".join(out)


rig.run_oha = run_oha
rig.summarize = summarize
rig.render_tables = render_tables

if __name__ == "__main__":
    rig.main()
