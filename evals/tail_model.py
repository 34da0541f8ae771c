#!/usr/bin/env python3
"""A model of the TTFT gate's tail process alone on scenario s06 (issue 12 point 5), to
choose its threshold window and prior on power: the same draws as src/simulate/traffic.rs
(log-normal TTFT, sigma 0.5, 2 % five times slower, the canary's upper half stretched so
its p95 is 1.3x), the same bets as src/judge/continuous.rs, and a revert when the tail
process alone reaches 1 / (alpha x the TTFT gate's share x the tail's half of the gate).
It leaves out the other gates and the judge's 5 s looks, so its figures are a little
below `sluice simulate`'s; it is a tool for comparing variants, not the figures to quote.

    python3 evals/tail_model.py            # 400 seeded runs per variant
"""
import json
import math
import random
import sys
from math import exp, log

ALPHA, GATE_SHARE = 0.01, 0.10 / 1.10
GRID = [1.25, 1.5, 2.0, 3.0, 5.0, 8.0]


def ttft(rng: random.Random, changed: bool, ratio: float) -> float:
    z = rng.gauss(0, 1)
    if changed and z > 0:
        z *= 1 + log(ratio) / (1.645 * 0.5)
    t = 300 * exp(0.5 * z)
    return t * 5 if rng.random() < 0.02 else t


def run(seed: int, window: int, prior: list[float], ratio: float, minutes: int = 60) -> int | None:
    """Canary requests until the tail process reverts, or None within the hour."""
    rng = random.Random(seed)
    need = log(1 / (ALPHA * GATE_SHARE * 0.5))
    log_prior = [log(p) for p in prior]
    values: list[float] = []
    oldest, since, threshold = 0, 0, math.inf
    wealth = [0.0] * len(GRID)
    t, canaries = 0.0, 0
    while True:
        t += rng.expovariate(10)
        if t > minutes * 60:
            return None
        canary = rng.random() < 0.05
        if rng.random() < 0.01:  # errors have no TTFT
            continue
        ly = log(ttft(rng, canary, ratio))
        canaries += canary
        if len(values) >= 32:
            bad = ly - (log(1.1) if canary else 0.0) > threshold
            for j, theta in enumerate(GRID):
                kappa = 0.95 + 0.05 * theta
                r = theta / kappa if bad else 1 / kappa
                wealth[j] += (log(r) if canary else 0.0) - log(0.95 + 0.05 * r)
            top = max(w + p for w, p in zip(wealth, log_prior))
            if top + log(sum(exp(w + p - top) for w, p in zip(wealth, log_prior))) >= need:
                return canaries
        if not canary:
            if len(values) < window:
                values.append(ly)
            else:
                values[oldest] = ly
                oldest = (oldest + 1) % window
            since += 1
            if since >= 16 or len(values) <= 32:
                ranked = sorted(values)
                threshold = ranked[math.ceil(0.95 * len(ranked)) - 1]
                since = 0


UNIFORM = [1 / 6] * 6
SMALL_FIRST = [0.3, 0.3, 0.2, 0.1, 0.05, 0.05]
VARIANTS = [
    ("window 256, uniform prior (before)", 256, UNIFORM),
    ("window 1024, uniform prior", 1024, UNIFORM),
    ("window 256, small ratios first", 256, SMALL_FIRST),
    ("window 512, small ratios first", 512, SMALL_FIRST),
    ("window 1024, small ratios first (now)", 1024, SMALL_FIRST),
]

if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    for ratio in (1.3, 1.2, 1.5, 2.0):
        for name, window, prior in VARIANTS if ratio == 1.3 else [VARIANTS[0], VARIANTS[-1]]:
            got = [run(1000 + i, window, prior, ratio) for i in range(runs)]
            hits = sorted(g for g in got if g is not None)
            median = sorted(g if g is not None else math.inf for g in got)[runs // 2]
            print(json.dumps({"p95_ratio": ratio, "variant": name, "reverted": round(len(hits) / runs, 3), "median_canary_requests": median if median != math.inf else None}))
