#!/usr/bin/env python3
"""Issue 12 point 4 on the error scenarios: does a different bet make the error gate
faster? A model of the error gate alone (docs/judge.md, "Its operating figures"):
requests are canary with probability w, fail at 1 % (stable) or the canary's rate, and
only failed requests carry evidence about the arm label under the tolerance null (the
canary at most 1.2 x stable's rate: a failed request is canary with probability at most
p0 = 1.2w / (1 - w + 1.2w)). Each bet below is a nonnegative supermartingale under that
null; a run reverts when it reaches 1/(alpha x share) with share = 0.30/0.95, the error
gate's part of alpha in policies/default.toml, and 0.9 of that weight on the process that
starts at 0 (the restarts of src/judge/binary.rs). Printed: the median canary requests to
revert, per scenario and bet.

Bets:
- grid, uniform: sluice's, the likelihood ratio of q_j = w 1.2 r_j / (1 - w + w 1.2 r_j)
  against p0 averaged over r_j in 1.25, 1.5, 2, 3, 5, 8 with weights 1/6;
- grid, large-effect prior: the same with weights moved toward the large ratios;
- ONS: one bet lambda on (A - p0) per failed request, lambda set by online Newton steps
  (Cutkosky and Orabona 2018, as used for betting e-processes by Waudby-Smith and Ramdas
  2023), clipped to [0, 0.5 / p0];
- plug-in: the likelihood ratio of a predictable estimate of P(canary | failed), the
  running share with half a pseudo-event, clipped to [p0, q(8)].

Seeded; no dependencies; about a minute.

    python3 evals/error_bet_model.py [runs]
"""
import math
import random
import sys

GRID = [1.25, 1.5, 2.0, 3.0, 5.0, 8.0]
TOL = 1.2
NEED = math.log(1 / (0.01 * 0.30 / 0.95)) + math.log(1 / 0.9)


def q(w: float, theta: float) -> float:
    return w * theta / (1 - w + w * theta)


def run(seed: int, w: float, rate: float, bet: str, prior=None, cap: int = 30000) -> int:
    rng = random.Random(seed)
    p0 = q(w, TOL)
    up = [math.log(q(w, TOL * g) / p0) for g in GRID]
    down = [math.log((1 - q(w, TOL * g)) / (1 - p0)) for g in GRID]
    log_prior = [math.log(p) for p in prior] if prior else None
    logs = [0.0] * len(GRID)
    log_wealth, lam, a2, n_bad, n_bad_canary, n_canary = 0.0, 0.0, 1.0, 0, 0, 0
    while n_canary < cap:
        canary = rng.random() < w
        n_canary += canary
        if rng.random() >= (rate if canary else 0.01):
            continue
        a = 1.0 if canary else 0.0
        if bet == "grid":
            for j in range(len(GRID)):
                logs[j] += up[j] if canary else down[j]
            top = max(l + p for l, p in zip(logs, log_prior))
            e = top + math.log(sum(math.exp(l + p - top) for l, p in zip(logs, log_prior)))
        elif bet == "ons":
            x = a - p0
            log_wealth += math.log(1 + lam * x)
            z = x / (1 + lam * x)
            a2 += z * z
            lam = min(max(lam + 2 / (2 - math.log(3)) * z / a2, 0.0), 0.5 / p0)
            e = log_wealth
        else:
            share = min(max((n_bad_canary + 0.5) / (n_bad + 1.0), p0), q(w, TOL * GRID[-1]))
            log_wealth += math.log(share / p0) if canary else math.log((1 - share) / (1 - p0))
            n_bad += 1
            n_bad_canary += canary
            e = log_wealth
        if e >= NEED:
            return n_canary
    return cap


def median(xs: list) -> int:
    xs = sorted(xs)
    return xs[len(xs) // 2]


runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
bets = [
    ("grid, uniform (sluice)", "grid", [1 / 6] * 6),
    ("grid, 0.1 0.1 0.15 0.2 0.25 0.2", "grid", [0.1, 0.1, 0.15, 0.2, 0.25, 0.2]),
    ("grid, 0.05 0.1 0.15 0.2 0.3 0.2", "grid", [0.05, 0.1, 0.15, 0.2, 0.3, 0.2]),
    ("ONS", "ons", None),
    ("plug-in", "plugin", None),
]
scenarios = [
    ("s01 1 % -> 5 % at 5 %", 0.05, 0.05, 157),
    ("s02 1 % -> 2 % at 5 %", 0.05, 0.02, 1210),
    ("s03 1 % -> 5 % at 25 %", 0.25, 0.05, 296),
    ("s04 1 % -> 2 % at 25 %", 0.25, 0.02, 2307),
]
print(f"median canary requests to revert, {runs} seeded runs each (cap 30 000)")
print("scenario | tuned threshold judge | " + " | ".join(b[0] for b in bets))
for name, w, rate, tuned in scenarios:
    cells = [median([run(s, w, rate, kind, prior) for s in range(runs)]) for _, kind, prior in bets]
    print(f"{name} | {tuned} | " + " | ".join(map(str, cells)))
