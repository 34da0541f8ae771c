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

# s06: log TTFT normal with sigma 0.5; the canary's upper half stretched so its p95 is 1.3x.
# The share above 1.1x stable's p95 (the gate's tolerance) is 5 % at the null boundary.
sigma = 0.5
stretch = 1 + log(1.3) / (1.645 * sigma)
p1 = 1 - NormalDist().cdf((1.645 + log(1.1) / sigma) / stretch)
for n in (1800, 900):
    k, size, power = oracle(n, 0.05, p1, 0.01)
    print(f"s06 TTFT tail, exceedance {p1:.3f}, n={n}: reject at >= {k} (size {size:.4f}), power {power:.3f}")
