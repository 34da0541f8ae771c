#!/usr/bin/env python3
"""The best any judge can do on the scenarios where sluice misses issue 12's targets
(docs/judge.md, "Its operating figures"). Point 5: the power of a one-sided fixed-sample
binomial test at the end of the hour that knows the null boundary and the alternative
exactly; no sequential test can beat it, so when it misses 95 % the target is out of reach
for any valid judge. Point 4: the median canary requests to revert on the error scenarios,
for any valid judge and for a design-based one that knows the effect (below), and for the
TTFT tail's known-effect likelihood ratio. Exact binomial tails, seeded simulations, no
dependencies (about 20 s).

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


# Issue 12 point 4: how fast the error scenarios can be caught at all. Two bounds on the
# canary requests a judge needs before it reverts, median over runs:
#
# 1. Any valid judge (rigorous): if a judge reverts by n canary requests in half the runs,
#    "reverted by n" is a fixed-sample test at its level with power >= 1/2, so the most
#    powerful test at n (Neyman-Pearson: canary failures ~ Bin(n, p), null boundary p0 =
#    stable's 1 % x the gate's tolerance 1.2, alternative p1; randomized at the boundary so
#    its size is exact) must reach 1/2 as well. The least such n bounds every judge's median
#    (for the scenario's rates without its workspaces' spread of error rates, sigma 0.4 in
#    log, which the simulator adds to both arms alike).
# 2. A design-based judge that knows the effect (practical): sluice's judge bets on the arm
#    label of each failed request, whose null odds come from the assignment alone (that is
#    what keeps it valid under drift, bursts and incidents). The best such bet knows the
#    true ratio: the likelihood ratio of q1 = w r / (1 - w + w r) against q0 = w 1.2 / (1 - w
#    + w 1.2) per failed request (the growth-optimal e-process; a judge that must learn r
#    grows slower). Its median time to 1/level, simulated per failed request (the canary
#    requests that did not fail are counted as a binomial draw, exact for this model).
#
# Levels: alpha = 0.01 for a judge watching errors alone; alpha x 0.30/0.95, the error
# gate's share of alpha among the seven gates of policies/default.toml (a fixed-weight
# average of e-values reverts on one gate only when that gate reaches 1/(alpha x share)).


def np_power(n: int, p0: float, p1: float, level: float) -> float:
    """Power at p1 of the randomized most powerful level-`level` test of Bin(n, p0)."""
    cum, k = 0.0, 0
    for x in range(n, -1, -1):
        q = exp(lgamma(n + 1) - lgamma(x + 1) - lgamma(n - x + 1) + x * log(p0) + (n - x) * log(1 - p0))
        if cum + q > level:
            k, gamma = x, (level - cum) / q
            break
        cum += q
    above, at = upper_tail(k + 1, n, p1), upper_tail(k, n, p1) - upper_tail(k + 1, n, p1)
    return above + gamma * at


def any_judge_median_bound(p0: float, p1: float, level: float) -> int:
    n = 1
    while np_power(n, p0, p1, level) < 0.5:
        n += 1
    return n


def design_based_oracle_median(w: float, ratio: float, level: float, runs: int = 2000, seed: int = 7) -> int:
    import random

    rng = random.Random(seed)
    stable, tol = 0.01, 1.2
    p_bad = (1 - w) * stable + w * stable * ratio
    q1 = w * ratio / (1 - w + w * ratio)
    q0 = w * tol / (1 - w + w * tol)
    up, down, need = log(q1 / q0), log((1 - q1) / (1 - q0)), log(1 / level)
    # A request that did not fail is canary with this probability.
    ok_canary = w * (1 - stable * ratio) / (1 - p_bad)
    stops = []
    for _ in range(runs):
        total, not_failed, canary_bad = 0.0, 0, 0
        while total < need:
            # The requests up to the next failed one: a geometric run of requests that did not fail.
            not_failed += int(log(1 - rng.random()) / log(1 - p_bad))
            if rng.random() < q1:
                total, canary_bad = total + up, canary_bad + 1
            else:
                total += down
        # Canary requests: the failed canary ones, and a binomial share of those that did not
        # fail (drawn by its normal approximation: thousands of trials, the median is what is read).
        mean, sd = not_failed * ok_canary, (not_failed * ok_canary * (1 - ok_canary)) ** 0.5
        stops.append(canary_bad + max(0, round(rng.gauss(mean, sd))))
    stops.sort()
    return stops[len(stops) // 2]


share_err = 0.30 / 0.95
print()
print("issue 12 point 4: median canary requests to revert, error scenarios (null boundary 1.2 x stable's 1 %)")
print("scenario | best tuned threshold judge | any valid judge, alpha | same at the gate's share | design-based oracle, alpha | same at the gate's share | sluice")
for name, w, ratio, baseline, ours in (
    ("s01 1 % -> 5 % at 5 %", 0.05, 5.0, 157, "222"),
    ("s02 1 % -> 2 % at 5 %", 0.05, 2.0, 1210, "- (28.8 % reverted)"),
    ("s03 1 % -> 5 % at 25 %", 0.25, 5.0, 296, "328"),
    ("s04 1 % -> 2 % at 25 %", 0.25, 2.0, 2307, "3796"),
    # Counted from the onset at minute 20, which the bounds are told and a judge is not:
    # the tuned judge's 1 214 from the start less the 600 canary requests before it.
    ("s08 1 % -> 3 % at 5 % from minute 20", 0.05, 3.0, "614", "- (49.6 % reverted)"),
):
    # Not `p1`: that name is the TTFT tail's exceedance, which tail_oracle_median reads
    # below (a loop variable of that name once made its figures those of a 2 % rate).
    p_canary = 0.01 * ratio
    bounds = [any_judge_median_bound(0.012, p_canary, a) for a in (0.01, 0.01 * share_err)]
    oracles = [design_based_oracle_median(w, ratio, a) for a in (0.01, 0.01 * share_err)]
    print(f"{name} | {baseline} | {bounds[0]} | {bounds[1]} | {oracles[0]} | {oracles[1]} | {ours}")


def tail_oracle_median(level: float, runs: int = 4000, seed: int = 11) -> int:
    """s06: median canary requests (with a TTFT) before the known-effect likelihood ratio of
    the tail exceedance (p1 against 5 %) reaches 1/level; runs that never do count as never."""
    import random

    rng = random.Random(seed)
    up, down, need = log(p1 / 0.05), log((1 - p1) / 0.95), log(1 / level)
    stops = []
    for _ in range(runs):
        total, n = 0.0, 0
        while total < need and n < 100_000:
            n += 1
            total += up if rng.random() < p1 else down
        stops.append(n)
    stops.sort()
    return stops[len(stops) // 2]


levels = (0.01, 0.01 * share, 0.005 * share)
tail_bounds = [any_judge_median_bound(0.05, p1, a) for a in levels]
tail_oracles = [tail_oracle_median(a) for a in levels]
print()
print("s06 TTFT tail +30 %: median canary requests to revert (exceedance of stable's p95, 5 % against")
print(f"{p1:.4f}), at alpha / at the TTFT gate's share / at the tail process's half of it")
print("best tuned threshold judge: 731 (Argo-style); sluice: 1224")
print(f"any valid judge: {' / '.join(map(str, tail_bounds))}")
print(f"likelihood ratio of the exceedance, effect known: {' / '.join(map(str, tail_oracles))}")
