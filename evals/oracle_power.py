#!/usr/bin/env python3
"""The power of the best possible test on two slow-gate scenarios (docs/judge.md, issue 12
point 5): a one-sided fixed-sample binomial test at the end of the hour that knows the null
boundary and the alternative exactly. No sequential test can beat it, so when it misses
95 % the target is out of reach for any valid judge. Exact binomial tails, no dependencies.

    python3 evals/oracle_power.py
"""
from math import exp, lgamma, log
from statistics import NormalDist


def upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(
        exp(lgamma(n + 1) - lgamma(x + 1) - lgamma(n - x + 1) + x * log(p) + (n - x) * log(1 - p))
        for x in range(k, n + 1)
    )


def oracle(n: int, p0: float, p1: float, alpha: float) -> tuple[int, float, float]:
    """(critical count, size, power) of the level-alpha test of p0 against p1 on n trials."""
    k = next(k for k in range(n + 1) if upper_tail(k, n, p0) <= alpha)
    return k, upper_tail(k, n, p0), upper_tail(k, n, p1)


# s07: 10 requests/s, canary at 5 %, 20 % ask a schema: 360 canary schema requests an hour;
# stable fails 2 %, the gate tolerates 1.2x (null boundary 2.4 %), the canary fails 6 %.
for alpha in (0.01, 0.01 / 7):
    k, size, power = oracle(360, 0.024, 0.06, alpha)
    print(f"s07 schema, n=360, alpha={alpha:.5f}: reject at >= {k} (size {size:.4f}), power {power:.3f}")
n = next(n for n in range(360, 5000, 10) if oracle(n, 0.024, 0.06, 0.01)[2] >= 0.95)
print(f"s07 schema: 95 % power at alpha=0.01 needs n={n} ({n / 360 * 60:.0f} minutes)")

# s06: log TTFT normal with sigma 0.5 and 2 % of requests 5x slower (both arms); the
# canary's normal upper half is stretched so that its p95 is about 1.3x. The gate's
# threshold is stable's p95 times the tolerance 1.1: 5 % of stable requests exceed stable's
# p95, so the null boundary is 5 %.
sigma, slow = 0.5, log(5)
stretch = 1 + log(1.3) / (1.645 * sigma)


def exceed_stable(t: float) -> float:
    return 0.98 * (1 - NormalDist().cdf(t / sigma)) + 0.02 * (1 - NormalDist().cdf((t - slow) / sigma))


def exceed_canary(t: float) -> float:
    def half(x: float) -> float:
        return 1 - NormalDist().cdf(x / stretch if x > 0 else x)

    return 0.98 * half(t / sigma) + 0.02 * half((t - slow) / sigma)


lo, hi = 0.0, 5.0
for _ in range(100):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if exceed_stable(mid) > 0.05 else (lo, mid)
p1 = exceed_canary(lo + log(1.1))
# One hour's canary requests with a TTFT: 5 % of 10 requests/s, less the 1 % that fail.
n_hour = 1782
# The TTFT gate's share of alpha in policies/default.toml: 0.10 of 1.10; today the tail
# process has half of the gate.
share = 0.10 / 1.10
for n in (n_hour, 900):
    for label, a in (("alpha", 0.01), ("alpha x gate share", 0.01 * share), ("alpha x share / 2", 0.005 * share)):
        k, size, power = oracle(n, 0.05, p1, a)
        print(f"s06 TTFT tail, exceedance {p1:.4f}, n={n}, {label} ({a:.6f}): reject at >= {k} (size {size:.5f}), power {power:.3f}")


def sprt_power(n: int, level: float, runs: int = 20000, seed: int = 5) -> float:
    """Share of runs in which the likelihood ratio of the true alternative (p1 against 5 %,
    both known: the growth-optimal e-process, no prior to pay for) reaches 1/level within
    n canary requests. It is what an anytime-valid judge could reach if it knew the effect."""
    import random

    rng = random.Random(seed)
    up, down, need = log(p1 / 0.05), log((1 - p1) / 0.95), log(1 / level)
    hits = 0
    for _ in range(runs):
        total = 0.0
        for _ in range(n):
            total += up if rng.random() < p1 else down
            if total >= need:
                hits += 1
                break
    return hits / runs


for label, a in (("alpha", 0.01), ("alpha x gate share", 0.01 * share), ("alpha x share / 2", 0.005 * share)):
    print(f"s06 TTFT tail, oracle e-process, n={n_hour}, {label}: reaches 1/level in {sprt_power(n_hour, a):.3f} of runs")
