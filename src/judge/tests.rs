use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::rollout::policy::{Policy, parse_policy};

fn policy(gates: &str) -> Policy {
    let text =
        format!("alpha = 0.01\n[[steps]]\nweight = 5\nhold = \"10m\"\nmin_requests = 100\n{gates}");
    parse_policy(Path::new("test.toml"), "test", &text).unwrap_or_else(|e| panic!("{e}"))
}

const ALL_GATES_NO_TOLERANCE: &str = "
[gates.error_rate]
max_ratio = 1
[gates.latency_p95]
max_ratio = 1
[gates.ttft_p95]
max_ratio = 1
[gates.tokens_per_request]
max_ratio = 1
[gates.cost_per_request]
max_ratio = 1
[gates.response_length]
max_ratio = 1
min_ratio = 1
[gates.schema_failure_rate]
max_ratio = 1
[gates.guardrail_block_rate]
max_ratio = 1
";

fn obs(rng: &mut StdRng, at_ms: i64, canary: bool, w: f64) -> Observation {
    let tokens = (6.0 + 0.9 * normal(rng)).exp();
    Observation {
        at_ms,
        arm: if canary { Arm::Canary } else { Arm::Stable },
        w,
        randomized: true,
        error: rng.random::<f64>() < 0.02,
        latency_ms: (7.0 + 0.5 * normal(rng)).exp(),
        ttft_ms: Some((5.5 + 0.5 * normal(rng)).exp()),
        tokens,
        cost_usd: tokens * 2e-6,
        response_chars: tokens * 3.5,
        schema_failed: (rng.random::<f64>() < 0.2).then(|| rng.random::<f64>() < 0.05),
        guardrail_blocked: rng.random::<f64>() < 0.01,
        unit: None,
    }
}

fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random::<f64>().max(1e-300);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[test]
fn the_weights_follow_the_research_defaults_renormalized_over_the_policy_gates() {
    // internal-first judges error (0.30) and five continuous gates (0.10 each): total 0.8,
    // so error_rate weighs 0.30 / 0.8 = 0.375 and each other gate 0.125.
    let p = crate::rollout::policy::load_policy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/internal-first.toml"),
    )
    .unwrap();
    let report = Judge::new(&p.judge_spec()).report(0);
    let weight = |m| report.gates.iter().find(|g| g.gate == m).unwrap().weight;
    assert!((weight(Metric::ErrorRate) - 0.375).abs() < 1e-12);
    assert!((weight(Metric::TokensPerRequest) - 0.125).abs() < 1e-12);
    assert_eq!(report.e_global, 1.0);
}

#[test]
fn every_step_is_a_martingale_step_whatever_the_outcome() {
    // Under the null the label of the next request is canary with probability w whatever
    // its outcome, so w·E(after canary) + (1 − w)·E(after stable) must equal E(now)
    // exactly, for the global average and for each gate, at any point of a run.
    let p = policy(ALL_GATES_NO_TOLERANCE);
    let mut rng = StdRng::seed_from_u64(7);
    let mut judge = Judge::new(&p.judge_spec());
    for i in 0..3000 {
        let w = [0.05, 0.25, 0.5][i / 1000];
        let canary = rng.random::<f64>() < w;
        let o = obs(&mut rng, i as i64 * 100, canary, w);
        if i % 250 == 249 {
            let now = judge.look(o.at_ms);
            let mut as_canary = judge.clone();
            as_canary.observe(&Observation {
                arm: Arm::Canary,
                ..o.clone()
            });
            let mut as_stable = judge.clone();
            as_stable.observe(&Observation {
                arm: Arm::Stable,
                ..o.clone()
            });
            let (c, s) = (as_canary.look(o.at_ms), as_stable.look(o.at_ms));
            let expect = w * c.e_global + (1.0 - w) * s.e_global;
            assert!(
                (expect - now.e_global).abs() < 1e-9 * now.e_global.max(1.0),
                "{expect} vs {}",
                now.e_global
            );
            for k in 0..now.gates.len() {
                let expect = w * c.gates[k].e_value + (1.0 - w) * s.gates[k].e_value;
                let got = now.gates[k].e_value;
                assert!(
                    (expect - got).abs() < 1e-9 * got.max(1.0),
                    "{:?}: {expect} vs {got}",
                    now.gates[k].gate
                );
            }
        }
        judge.observe(&o);
    }
}

#[test]
fn a_a_runs_average_one_and_rarely_cross_the_threshold() {
    // 400 seeded A/A runs of 1 500 requests at w = 0.2 with every gate and no tolerance.
    // Ville: P(sup_t E ≥ 1/α) ≤ α. At α = 0.1 the Monte-Carlo bound is
    // 0.1 + 3·sqrt(0.1·0.9/400) = 0.145. The mean of E after 200 requests estimates
    // E[E] = 1 (its spread is small that early).
    let p = policy(ALL_GATES_NO_TOLERANCE);
    let (runs, mut crossed, mut sum_early) = (400, 0, 0.0);
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(1000 + seed);
        let mut judge = Judge::new(&p.judge_spec());
        let mut hit = false;
        for i in 0..1500 {
            let canary = rng.random::<f64>() < 0.2;
            judge.observe(&obs(&mut rng, i * 200, canary, 0.2));
            if i % 25 == 24 {
                let e = judge.look(i * 200).e_global;
                hit |= e >= 10.0;
                if i == 199 {
                    sum_early += e;
                }
            }
        }
        crossed += u32::from(hit);
    }
    let rate = f64::from(crossed) / runs as f64;
    let mean = sum_early / runs as f64;
    assert!(rate <= 0.145, "sup E ≥ 10 in {rate} of A/A runs");
    assert!(
        (0.8..1.2).contains(&mean),
        "mean E after 200 requests = {mean}"
    );
}

#[test]
fn canary_is_reverted_when_its_error_rate_quintuples() {
    let p = policy("[gates.error_rate]\nmax_ratio = 1.2\n");
    let mut rng = StdRng::seed_from_u64(3);
    let mut judge = Judge::new(&p.judge_spec());
    let mut reverted_at = None;
    for i in 0..40_000i64 {
        let canary = rng.random::<f64>() < 0.05;
        let mut o = obs(&mut rng, i * 100, canary, 0.05);
        o.error = rng.random::<f64>() < if canary { 0.05 } else { 0.01 };
        judge.observe(&o);
        if i % 50 == 0 && judge.look(o.at_ms).revert {
            reverted_at = Some(judge.canary_requests);
            break;
        }
    }
    let n = reverted_at.expect("a fivefold error rate is caught");
    assert!(n < 1000, "took {n} canary requests");
    let report = judge.report(0);
    assert_eq!(report.gates[0].verdict, GateVerdict::Fail);
    let (lo, hi) = report.gates[0].ci.unwrap();
    let effect = report.gates[0].effect.unwrap();
    assert!(
        lo > 1.0 && hi > effect && lo < effect,
        "{lo}..{hi} around {effect}"
    );
    assert!(
        report.reasons[0].starts_with("judge: evidence of harm"),
        "{:?}",
        report.reasons
    );
}

#[test]
fn no_data_is_neither_a_pass_nor_a_revert() {
    let p = policy(ALL_GATES_NO_TOLERANCE);
    let report = Judge::new(&p.judge_spec()).report(5_000);
    assert!(!report.revert && !report.srm.broken);
    assert!(
        report
            .gates
            .iter()
            .all(|g| g.verdict == GateVerdict::NotYet)
    );
}

#[test]
fn pinned_requests_are_never_judged_but_trip_the_kill_switch() {
    // 30 pinned canary requests that all fail: the e-processes see nothing, the kill
    // switch (≥ 50 % over ≥ 20 in 60 s, the default) fires.
    let p = policy("[gates.error_rate]\nmax_ratio = 1\n");
    let mut rng = StdRng::seed_from_u64(4);
    let mut judge = Judge::new(&p.judge_spec());
    for i in 0..30 {
        let mut o = obs(&mut rng, i * 1000, true, 1.0);
        o.randomized = false;
        o.error = true;
        judge.observe(&o);
    }
    let report = judge.report(30_000);
    assert_eq!(report.e_global, 1.0);
    assert_eq!(report.gates[0].n_canary, 0);
    assert!(report.kill_switch_fired && report.revert);
    assert_eq!(report.canary_requests, 30);
}

#[test]
fn a_hard_limit_needs_twenty_canary_requests_then_fires() {
    let p = policy("[gates.latency_p95]\nmax_ms = 1000\n");
    let mut rng = StdRng::seed_from_u64(5);
    let mut judge = Judge::new(&p.judge_spec());
    for i in 0..19 {
        let mut o = obs(&mut rng, i, true, 0.05);
        o.latency_ms = 5000.0;
        judge.observe(&o);
    }
    assert!(
        !judge.report(20).revert,
        "19 slow requests are not yet a p95"
    );
    let mut o = obs(&mut rng, 20, true, 0.05);
    o.latency_ms = 5000.0;
    judge.observe(&o);
    let report = judge.report(21);
    assert!(report.revert, "{report:?}");
    assert_eq!(report.gates[0].verdict, GateVerdict::Fail);
    assert_eq!(
        report.gates[0].weight, 0.0,
        "a hard limit alone carries no statistical weight"
    );
}

#[test]
fn lost_canary_records_break_the_design() {
    let p = policy("[gates.error_rate]\nmax_ratio = 1\n");
    let mut rng = StdRng::seed_from_u64(6);
    let mut judge = Judge::new(&p.judge_spec());
    let mut lost = 0;
    for i in 0..5000 {
        let canary = rng.random::<f64>() < 0.05;
        judge.note_assignment(
            if canary { Arm::Canary } else { Arm::Stable },
            0.05,
            i * 100,
        );
        if canary && rng.random::<f64>() < 0.05 {
            lost += 1;
            continue;
        }
        judge.observe(&obs(&mut rng, i * 100, canary, 0.05));
    }
    judge.tick(500_000 + guards::OVERDUE_MS);
    let report = judge.report(500_000 + guards::OVERDUE_MS);
    assert!(lost >= 5, "{lost}");
    assert_eq!(report.srm.lost_canary, lost);
    assert_eq!(report.srm.lost_stable, 0);
    assert!(report.srm.broken, "{:?}", report.srm);
}

#[test]
fn a_checkpointed_judge_resumes_exactly() {
    let p = policy(ALL_GATES_NO_TOLERANCE);
    let mut rng = StdRng::seed_from_u64(8);
    let mut judge = Judge::new(&p.judge_spec());
    let stream: Vec<Observation> = (0..2000)
        .map(|i| {
            let c = rng.random::<f64>() < 0.25;
            obs(&mut rng, i * 100, c, 0.25)
        })
        .collect();
    for o in &stream[..1000] {
        judge.observe(o);
    }
    let json = serde_json::to_string(&judge).unwrap();
    let mut restored: Judge = serde_json::from_str(&json).unwrap();
    for o in &stream[1000..] {
        judge.observe(o);
        restored.observe(o);
    }
    // serde_json may round a float's last bit on the way back, so compare closely.
    let (a, b) = (judge.report(200_000), restored.report(200_000));
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
    assert!(
        close(a.e_global, b.e_global),
        "{} vs {}",
        a.e_global,
        b.e_global
    );
    for (x, y) in a.gates.iter().zip(&b.gates) {
        assert!(close(x.e_value, y.e_value), "{:?}", x.gate);
        assert_eq!(
            (x.n_stable, x.n_canary, x.verdict),
            (y.n_stable, y.n_canary, y.verdict)
        );
    }
}

#[test]
fn a_longer_response_trips_only_the_upper_side_and_a_collapse_the_lower() {
    let run = |gates: &str, factor: f64| {
        let p = policy(&format!("[gates.response_length]\n{gates}\n"));
        let mut rng = StdRng::seed_from_u64(9);
        let mut judge = Judge::new(&p.judge_spec());
        for i in 0..20_000i64 {
            let canary = rng.random::<f64>() < 0.25;
            let mut o = obs(&mut rng, i * 100, canary, 0.25);
            if canary {
                o.response_chars *= factor;
            }
            judge.observe(&o);
        }
        judge.report(2_000_000)
    };
    let both = "max_ratio = 1.5\nmin_ratio = 0.5";
    let (upper, lower) = ("max_ratio = 1.5", "min_ratio = 0.5");
    for (factor, side) in [(3.0, Some(upper)), (0.2, Some(lower)), (1.0, None)] {
        let report = run(both, factor);
        assert_eq!(
            report.revert,
            side.is_some(),
            "×{factor}: E = {}",
            report.e_global
        );
        let effect = report.gates[0].effect.unwrap();
        assert!(
            (effect / factor - 1.0).abs() < 0.1,
            "×{factor} estimated ×{effect}"
        );
        // Which side tripped: with only that side the gate still trips, with only the
        // other side it does not.
        for one_side in [upper, lower] {
            let report = run(one_side, factor);
            assert_eq!(
                report.revert,
                side == Some(one_side),
                "×{factor} with only `{one_side}`: E = {}",
                report.e_global
            );
        }
    }
}

fn sticky_policy() -> Policy {
    let text = format!(
        "alpha = 0.01\nsticky = \"user\"\n[[steps]]\nweight = 5\nhold = \"10m\"\nmin_requests = 100\n[[steps]]\nweight = 25\nhold = \"10m\"\nmin_requests = 100\n{ALL_GATES_NO_TOLERANCE}"
    );
    parse_policy(Path::new("test.toml"), "test", &text).unwrap_or_else(|e| panic!("{e}"))
}

/// 300 users with buckets b_u, heavy and clustered (user 0..9 error at 30 % on both
/// arms); 2 000 requests at w = 0.05, then 4 000 at w = 0.25, one in ten and then one in
/// seven from the target user, stable at 5 % (b ≥ 0.05). Returns (target, stream).
fn nested_weight_stream(rng: &mut StdRng) -> (u64, Vec<Observation>) {
    let buckets: Vec<f64> = (0..300).map(|_| rng.random()).collect();
    let target = (0..300u64)
        .find(|&u| buckets[u as usize] >= 0.05)
        .expect("a stable user");
    let mut stream = Vec::new();
    for i in 0..2000i64 {
        let u = if i % 10 == 0 {
            target
        } else {
            rng.random_range(0..300)
        };
        let w = 0.05;
        let mut o = obs(rng, i * 100, buckets[u as usize] < w, w);
        o.unit = Some(u);
        o.error = rng.random::<f64>() < if u < 10 { 0.3 } else { 0.02 };
        stream.push(o);
    }
    for i in 2000..6000i64 {
        let u = if i % 7 == 0 {
            target
        } else {
            rng.random_range(0..300)
        };
        let w = 0.25;
        let mut o = obs(rng, i * 100, buckets[u as usize] < w, w);
        o.unit = Some(u);
        stream.push(o);
    }
    (target, stream)
}

/// The index of the request that settles the target's 25 % segment: only the target's
/// own requests can settle it (no segment here comes of age), and the rule reads
/// outcomes only.
fn settling_request(p: &Policy, stream: &[Observation], target: u64) -> usize {
    let mut judge = Judge::new(&p.judge_spec());
    let settled = |j: &Judge| j.look(0).units.expect("sticky").settled;
    for (i, o) in stream.iter().enumerate() {
        let before = settled(&judge);
        judge.observe(o);
        if o.unit == Some(target) && o.w == 0.25 && settled(&judge) > before {
            return i;
        }
    }
    panic!("the target's 25 % segment settles")
}

/// The judge's looks just before and just after `stream[split]`, with every request of
/// the target at 25 % labelled canary (or stable).
fn looks_around_settlement(
    p: &Policy,
    stream: &[Observation],
    target: u64,
    split: usize,
    canary: bool,
) -> (JudgeReport, JudgeReport) {
    let mut judge = Judge::new(&p.judge_spec());
    for o in &stream[..split] {
        let mut o = o.clone();
        if o.unit == Some(target) && o.w == 0.25 {
            o.arm = if canary { Arm::Canary } else { Arm::Stable };
        }
        judge.observe(&o);
    }
    judge.tick(stream[split].at_ms);
    let before = judge.look(stream[split].at_ms);
    let mut last = stream[split].clone();
    last.arm = if canary { Arm::Canary } else { Arm::Stable };
    judge.observe(&last);
    (before, judge.look(last.at_ms))
}

#[test]
fn the_per_unit_process_is_a_martingale_at_a_settlement_across_nested_weights() {
    // The target user is stable at 5 % and seen there, so at 25 % it is canary with
    // probability (0.25 − 0.05)/(1 − 0.05). Its 25 % segment settles at one of its requests
    // there (its 200th, or earlier when its evidence nears the cap): the e-values after
    // that request, averaged over its two possible labels with those odds, must equal the
    // e-values before it, for every gate and the global average.
    let p = sticky_policy();
    let mut rng = StdRng::seed_from_u64(11);
    let (target, stream) = nested_weight_stream(&mut rng);
    let split = settling_request(&p, &stream, target);
    let (before_c, after_c) = looks_around_settlement(&p, &stream, target, split, true);
    let (before_s, after_s) = looks_around_settlement(&p, &stream, target, split, false);
    let odds = (0.25 - 0.05) / (1.0 - 0.05);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
    assert!(
        close(before_c.e_global, before_s.e_global),
        "an open segment carries no evidence yet"
    );
    assert!(
        !close(after_c.e_global, after_s.e_global),
        "the settlement moved the e-value"
    );
    let expect = odds * after_c.e_global + (1.0 - odds) * after_s.e_global;
    assert!(
        close(expect, before_c.e_global),
        "{expect} vs {}",
        before_c.e_global
    );
    for k in 0..before_c.gates.len() {
        let expect = odds * after_c.gates[k].e_value + (1.0 - odds) * after_s.gates[k].e_value;
        assert!(
            close(expect, before_c.gates[k].e_value),
            "{:?}: {expect} vs {}",
            before_c.gates[k].gate,
            before_c.gates[k].e_value
        );
    }
}

#[test]
fn sticky_a_a_runs_with_clustered_errors_average_one_and_rarely_cross() {
    // 120 seeded A/A runs, sticky by user (400 users, Pareto activity, 5 % of them at
    // 30 % errors on both arms), 2 000 requests at w = 0.2. The per-request process
    // crosses 1/α = 10 far more often than α here; the per-unit one must not:
    // Monte-Carlo bound 0.1 + 3·sqrt(0.1·0.9/120) = 0.182.
    let p = sticky_policy();
    let (runs, mut crossed, mut sum_end) = (120u64, 0, 0.0);
    for seed in 0..runs {
        let mut rng = StdRng::seed_from_u64(5000 + seed);
        let activity: Vec<f64> = (0..400)
            .map(|_| rng.random::<f64>().max(1e-9).powf(-1.0 / 1.2))
            .collect();
        let total: f64 = activity.iter().sum();
        let buckets: Vec<f64> = (0..400).map(|_| rng.random()).collect();
        let mut judge = Judge::new(&p.judge_spec());
        let mut hit = false;
        for i in 0..2000i64 {
            let mut x = rng.random::<f64>() * total;
            let mut u = 0;
            while x > activity[u] && u < 399 {
                x -= activity[u];
                u += 1;
            }
            let mut o = obs(&mut rng, i * 1000, buckets[u] < 0.2, 0.2);
            o.unit = Some(u as u64);
            o.error = rng.random::<f64>() < if u % 20 == 0 { 0.3 } else { 0.02 };
            judge.observe(&o);
            if i % 25 == 24 {
                judge.tick(i * 1000);
                hit |= judge.look(i * 1000).e_global >= 10.0;
            }
        }
        judge.tick(i64::MAX / 2);
        sum_end += judge.look(0).e_global.min(1e6);
        crossed += u32::from(hit);
    }
    let rate = f64::from(crossed) / runs as f64;
    assert!(rate <= 0.182, "sup E ≥ 10 in {rate} of sticky A/A runs");
    let mean = sum_end / runs as f64;
    assert!(mean < 2.0, "mean final E = {mean}");
}

/// A request with fixed figures and nothing wrong with it, for tests that count.
fn plain(at_ms: i64, canary: bool, w: f64) -> Observation {
    Observation {
        at_ms,
        arm: if canary { Arm::Canary } else { Arm::Stable },
        w,
        randomized: true,
        error: false,
        latency_ms: 100.0,
        ttft_ms: Some(50.0),
        tokens: 100.0,
        cost_usd: 1e-4,
        response_chars: 350.0,
        schema_failed: None,
        guardrail_blocked: false,
        unit: None,
    }
}

#[test]
fn each_gate_reports_both_arms_figures_from_the_requests_it_judges() {
    // Canary at w = ½: 100, 200, 300 ms with as many tokens, one error (5 000 ms) and one
    // pinned request (400 ms, a million tokens). Stable: 1 000, 2 000, 3 000 ms with 10,
    // 20, 30 tokens, and two errors (9 000 ms). Rates count every randomized request;
    // means skip errors; the canary's p95 (the hard limit's) is over every canary
    // request, stable's over its judged ones: rank ⌈0.95·n⌉.
    let p = policy(
        "[gates.error_rate]\nmax_ratio = 1\n[gates.tokens_per_request]\nmax_ratio = 1\n[gates.latency_p95]\nmax_ratio = 1\n",
    );
    let mut judge = Judge::new(&p.judge_spec());
    for g in &judge.report(0).gates {
        assert_eq!(
            (g.stable_value, g.canary_value),
            (None, None),
            "{:?}",
            g.gate
        );
    }
    let requests = [
        (true, true, false, 100.0, 100.0),
        (true, true, false, 200.0, 200.0),
        (true, true, false, 300.0, 300.0),
        (true, true, true, 5000.0, 0.0),
        (true, false, false, 400.0, 1e6),
        (false, true, false, 1000.0, 10.0),
        (false, true, false, 2000.0, 20.0),
        (false, true, false, 3000.0, 30.0),
        (false, true, true, 9000.0, 0.0),
        (false, true, true, 9000.0, 0.0),
    ];
    for (i, &(canary, randomized, error, latency_ms, tokens)) in requests.iter().enumerate() {
        judge.observe(&Observation {
            randomized,
            error,
            latency_ms,
            tokens,
            ..plain(i as i64 * 100, canary, 0.5)
        });
    }
    let r = judge.report(1_000);
    assert_eq!((r.canary_requests, r.stable_requests), (5, 5));
    let figures = |m| {
        let g = r.gates.iter().find(|g| g.gate == m).unwrap();
        (
            g.n_stable,
            g.n_canary,
            g.stable_value.unwrap(),
            g.canary_value.unwrap(),
        )
    };
    assert_eq!(figures(Metric::ErrorRate), (5, 4, 0.4, 0.25));
    assert_eq!(figures(Metric::TokensPerRequest), (3, 3, 20.0, 200.0));
    let (n_stable, n_canary, stable_p95, canary_p95) = figures(Metric::LatencyP95);
    assert_eq!((n_stable, n_canary, canary_p95), (3, 3, 5000.0));
    assert!((stable_p95 - 3000.0).abs() < 1e-9, "{stable_p95}");
}

#[test]
fn a_gate_passes_once_each_arm_has_a_hundred_randomized_requests() {
    let p = policy("[gates.error_rate]\nmax_ratio = 1\n");
    let verdict = |canary: i64, stable: i64| {
        let mut judge = Judge::new(&p.judge_spec());
        for i in 0..canary {
            judge.observe(&plain(i, true, 0.5));
        }
        for i in 0..stable {
            judge.observe(&plain(i, false, 0.5));
        }
        judge.report(1_000).gates[0].verdict
    };
    assert_eq!(verdict(100, 100), GateVerdict::Pass);
    assert_eq!(verdict(99, 100), GateVerdict::NotYet);
    assert_eq!(verdict(100, 99), GateVerdict::NotYet);
}

#[test]
fn feedback_is_judged_in_its_bad_direction_under_its_own_name() {
    // Weights: error 0.30 and three metrics at 0.15, total 0.75: 0.4 and 0.2 each. Gates:
    // error_rate, then the metrics by name. `converted` (binary, higher is better): a
    // canary that did not convert is a bad canary event at w = ½: the grid's mean of
    // 2θ/(1 + θ) is 1.4314815, and a binary gate's e-value is 0.9 of that plus 0.1 for
    // the restarts not begun (`binary.rs`): 1.3883333. `complaint` (binary, lower is
    // better): a stable complaint is a bad stable event, mean of 2/(1 + θ) = 0.5685185,
    // so 0.6116667. `rating` (numeric, higher is better, so only a fall is harm): after
    // 32 stable ratings of 1 and e² at w = 0 (m̂ = 1, ŝ = √(32/31)), a canary rating of
    // 1 scores g = −1/ŝ, judged as −g: 1.1232454. Global 0.4 + 0.2·(0.6116667 +
    // 1.3883333 + 1.1232454) = 1.0246491
    // (python3). A sticky rollout judges feedback per request too.
    for sticky in ["request", "user"] {
        let text = format!(
            "alpha = 0.01\nsticky = \"{sticky}\"\n[[steps]]\nweight = 5\nhold = \"10m\"\nmin_requests = 100\n[gates.error_rate]\nmax_ratio = 1\n[feedback.converted]\nkind = \"binary\"\ngood = \"higher\"\n[feedback.complaint]\nkind = \"binary\"\ngood = \"lower\"\n[feedback.rating]\nkind = \"numeric\"\ngood = \"higher\"\n"
        );
        let p =
            parse_policy(Path::new("test.toml"), "test", &text).unwrap_or_else(|e| panic!("{e}"));
        let mut judge = Judge::new(&p.judge_spec());
        for i in 0..32 {
            let rating = if i % 2 == 0 { 1.0 } else { 2f64.exp() };
            judge.observe_feedback("rating", Arm::Stable, 0.0, true, rating);
        }
        judge.observe_feedback("rating", Arm::Canary, 0.5, true, 1.0);
        judge.observe_feedback("converted", Arm::Canary, 0.5, true, 0.0);
        judge.observe_feedback("converted", Arm::Canary, 0.5, true, 1.0);
        // Not randomized, or no such metric: not judged.
        judge.observe_feedback("converted", Arm::Canary, 0.5, false, 0.0);
        judge.observe_feedback("other", Arm::Canary, 0.5, true, 0.0);
        judge.observe_feedback("complaint", Arm::Stable, 0.5, true, 1.0);
        judge.observe_feedback("complaint", Arm::Canary, 0.5, true, 0.0);
        let r = judge.report(0);
        let names: Vec<_> = r.gates.iter().map(|g| g.feedback.as_deref()).collect();
        assert_eq!(
            names,
            [None, Some("complaint"), Some("converted"), Some("rating")]
        );
        let counts: Vec<_> = r.gates.iter().map(|g| (g.n_stable, g.n_canary)).collect();
        assert_eq!(counts, [(0, 0), (1, 1), (0, 2), (32, 1)], "{sticky}");
        for (g, (weight, e)) in r.gates.iter().zip([
            (0.4, 1.0),
            (0.2, 0.611_666_7),
            (0.2, 1.388_333_3),
            (0.2, 1.123_245_4),
        ]) {
            assert!(
                (g.weight - weight).abs() < 1e-12,
                "{:?}: {}",
                g.feedback,
                g.weight
            );
            assert!(
                (g.e_value - e).abs() < 1e-7,
                "{sticky} {:?}: {}",
                g.feedback,
                g.e_value
            );
        }
        assert!((r.e_global - 1.024_649_1).abs() < 1e-7, "{}", r.e_global);
    }
}

#[test]
fn a_hard_limit_blames_the_canary_only_when_stable_is_under_it_or_half_as_slow() {
    // 20 requests per arm against max_ms = 1 000.
    let p = policy("[gates.latency_p95]\nmax_ms = 1000\n");
    let reasons = |stable_ms: f64, canary_ms: f64| {
        let mut judge = Judge::new(&p.judge_spec());
        for i in 0..20 {
            judge.observe(&Observation {
                latency_ms: stable_ms,
                ..plain(i, false, 0.05)
            });
            judge.observe(&Observation {
                latency_ms: canary_ms,
                ..plain(i, true, 0.05)
            });
        }
        judge.report(100).reasons
    };
    let head = |p95: u32| {
        format!(
            "latency_p95: canary p95 {p95} ms over the last 20 canary requests is above the hard limit 1000 ms"
        )
    };
    assert_eq!(
        reasons(500.0, 1500.0),
        [format!("{} (stable p95 is 500 ms)", head(1500))]
    );
    assert!(
        reasons(500.0, 1000.0).is_empty(),
        "a canary at the limit is not above it"
    );
    assert!(
        reasons(1200.0, 1500.0).is_empty(),
        "stable over the limit too and the canary less than twice as slow: the provider"
    );
    assert_eq!(
        reasons(1200.0, 2400.0),
        [format!(
            "{} (twice stable's p95 of 1200 ms over the same period)",
            head(2400)
        )]
    );
}

#[test]
fn a_gate_fails_on_its_own_share_and_the_largest_share_is_blamed_when_only_the_sum_crosses() {
    // Error 0.30, guardrail 0.15, schema 0.15: weights 0.5, 0.25, 0.25, α = 0.01. Only
    // canary bad events at w = ½ (tolerance 1): k of them give M(k) = mean over θ of
    // (2θ/(1 + θ))^k, and the gate's e-value is 0.9·M(k) + 0.1 (the restarts not begun
    // stand at 1; with no look, none begins): 6 → 11.331956, 10 → 84.880157,
    // 11 → 143.65394, 12 → 244.56794, 13 → 418.41560, 14 → 718.77525 (python3).
    let p = policy(
        "[gates.error_rate]\nmax_ratio = 1\n[gates.guardrail_block_rate]\nmax_ratio = 1\n[gates.schema_failure_rate]\nmax_ratio = 1\n",
    );
    let run = |errors: usize, blocks: usize, schema: usize| {
        let mut judge = Judge::new(&p.judge_spec());
        // One request every 10 s: the kill switch (20 in 60 s) never has enough.
        for i in 0..errors.max(blocks).max(schema) {
            judge.observe(&Observation {
                error: i < errors,
                guardrail_blocked: i < blocks,
                schema_failed: Some(i < schema),
                ..plain(i as i64 * 10_000, true, 0.5)
            });
        }
        let r = judge.report(200_000);
        let failed: Vec<Metric> = r
            .gates
            .iter()
            .filter(|g| g.verdict == GateVerdict::Fail)
            .map(|g| g.gate)
            .collect();
        (r, failed)
    };
    // 11 errors, 12 blocks, 6 schema failures: shares 71.83, 61.14, 2.83 (E = 135.80).
    // No share reaches 100, the sum does: the largest share (error, though guardrail's own
    // e-value is larger) is the cause; schema's 2 % is under the 5 % worth naming.
    let (r, failed) = run(11, 12, 6);
    assert!(!r.kill_switch_fired);
    assert!((r.e_global - 135.801_95).abs() < 1e-4, "{}", r.e_global);
    assert_eq!(failed, [Metric::ErrorRate]);
    assert_eq!(
        r.reasons,
        [
            "judge: evidence of harm E = 135.8 ≥ 1/α = 100 (shares: error_rate 53 %, guardrail_block_rate 45 %)"
        ]
    );
    // 10 errors, 12 blocks: the later gate with the smaller weight holds the larger share
    // (42.4 against 61.1, E = 103.8), so it is the cause, whatever the order.
    let (r, failed) = run(10, 12, 0);
    let share = |m: Metric| {
        let g = r.gates.iter().find(|g| g.gate == m).expect("gate");
        g.weight * g.e_value
    };
    let (errors, blocks) = (share(Metric::ErrorRate), share(Metric::GuardrailBlockRate));
    assert!(errors < blocks && blocks < 100.0, "{errors} {blocks}");
    assert!(r.e_global >= 100.0, "{}", r.e_global);
    assert_eq!(failed, [Metric::GuardrailBlockRate]);
    // 13 errors, 14 blocks: shares 209.21 and 179.69, each over 100 on its own: both fail.
    let (r, failed) = run(13, 14, 0);
    assert!((r.e_global - 389.151_61).abs() < 1e-4, "{}", r.e_global);
    assert_eq!(failed.len(), 2);
    assert!(failed.contains(&Metric::ErrorRate) && failed.contains(&Metric::GuardrailBlockRate));
}

#[test]
fn a_hard_limit_beside_judged_gates_takes_no_share_of_the_weight() {
    // error_rate (0.30) is the only judged gate: it weighs 1, and latency's max_ms gives
    // that gate no weight, so with no data the global e-value is exactly 1.
    let p = policy("[gates.error_rate]\nmax_ratio = 1\n[gates.latency_p95]\nmax_ms = 1000\n");
    let report = Judge::new(&p.judge_spec()).report(0);
    let weights: Vec<(Metric, f64)> = report.gates.iter().map(|g| (g.gate, g.weight)).collect();
    assert_eq!(
        weights,
        [(Metric::ErrorRate, 1.0), (Metric::LatencyP95, 0.0)]
    );
    assert_eq!(report.e_global, 1.0);
}

#[test]
fn in_a_sticky_rollout_an_error_is_a_bad_event_for_the_per_unit_process() {
    // Sticky by user; two canary errors without a user at w = ½, each settled at once
    // with p = ½. The pooled rate p̂ = (bad + 0.5)/(n + 50) after each is 1.5/51, then
    // 2.5/52; r_j = θ_j·exp(−(θ_j − 1)·p̂), the factor r_j/(½ + ½r_j), and the mean over
    // θ of the two factors' products is 2.0191122 (python3). Counted as not bad, the
    // same requests would give 0.9764117.
    let text = "alpha = 0.01\nsticky = \"user\"\n[[steps]]\nweight = 5\nhold = \"10m\"\nmin_requests = 100\n[gates.error_rate]\nmax_ratio = 1\n";
    let p = parse_policy(Path::new("test.toml"), "test", text).unwrap_or_else(|e| panic!("{e}"));
    let mut judge = Judge::new(&p.judge_spec());
    for i in 0..2 {
        judge.observe(&Observation {
            error: true,
            ..plain(i, true, 0.5)
        });
    }
    let r = judge.report(10);
    assert!(r.units.is_some());
    assert!(
        (r.gates[0].e_value - 2.019_112_2).abs() < 1e-7,
        "{}",
        r.gates[0].e_value
    );
}

/// Sticky by user, w = ½, requests without a user (each settles at once): stable's
/// tokens log-normal around e⁶, the canary's `ratio` times as many. The tokens gate's
/// e-value after 1 000 requests.
fn sticky_tokens_e_value(max_ratio: f64, ratio: f64) -> f64 {
    let text = format!(
        "alpha = 0.01\nsticky = \"user\"\n[[steps]]\nweight = 5\nhold = \"10m\"\nmin_requests = 100\n[gates.error_rate]\nmax_ratio = 1\n[gates.tokens_per_request]\nmax_ratio = {max_ratio}\n"
    );
    let p = parse_policy(Path::new("test.toml"), "test", &text).unwrap_or_else(|e| panic!("{e}"));
    let mut judge = Judge::new(&p.judge_spec());
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..1000 {
        let canary = i % 2 == 1;
        let mut o = obs(&mut rng, i, canary, 0.5);
        o.error = false;
        if canary {
            o.tokens *= ratio;
        }
        judge.observe(&o);
    }
    let r = judge.report(1000);
    assert!(r.units.is_some());
    eprintln!(
        "max_ratio {max_ratio}, ratio {ratio}: e = {}",
        r.gates[1].e_value
    );
    assert_eq!(r.gates[1].gate, Metric::TokensPerRequest);
    r.gates[1].e_value
}

#[test]
fn in_a_sticky_rollout_a_value_gate_is_judged_per_unit_against_its_own_tolerance() {
    // A token count is a value for the per-unit process, not a bad event: four times the
    // tokens crosses 1/α. And each gate keeps its own max_ratio: twice the tokens is within
    // a tolerance of 3, where the error gate's tolerance of 1 would call it harm.
    let four_times = sticky_tokens_e_value(3.0, 4.0);
    assert!(
        four_times >= 100.0,
        "4× against max_ratio 3: e = {four_times}"
    );
    let within = sticky_tokens_e_value(3.0, 2.0);
    assert!(within < 2.0, "2× against max_ratio 3: e = {within}");
    let strict = sticky_tokens_e_value(1.0, 2.0);
    assert!(strict >= 100.0, "2× against max_ratio 1: e = {strict}");
}

#[test]
fn a_two_minute_incident_on_the_canary_alone_after_a_calm_reverts_through_a_restart() {
    // s16's shape through the judge: 10 requests/s at w = 0.05 for 20 minutes, both arms
    // failing 1 % (6 canary and 120 stable errors), then two minutes in which the canary
    // fails 20 % (12 of 60, under the kill switch's 50 %) and stable still 1 %.
    let p = policy("[gates.error_rate]\nmax_ratio = 1.2\n");
    let mut judge = Judge::new(&p.judge_spec());
    let mut whole_only = CountProcess::default();
    let request = |i: i64, burst: bool| {
        let canary = i % 20 == 0;
        let error = match (canary, burst) {
            (true, false) => (i / 20) % 100 == 0,
            (true, true) => (i / 20) % 5 == 0,
            (false, _) => i % 100 == 1,
        };
        Observation {
            error,
            ..plain(i * 100, canary, 0.05)
        }
    };
    // The controller looks every 5 s (every 50 requests), ticking first.
    let feed = |judge: &mut Judge,
                whole_only: &mut CountProcess,
                requests: std::ops::Range<i64>,
                burst: bool| {
        for i in requests {
            let obs = request(i, burst);
            whole_only.observe(obs.arm == Arm::Canary, obs.w, obs.error);
            judge.observe(&obs);
            if i % 50 == 49 {
                judge.tick(obs.at_ms);
            }
        }
    };
    feed(&mut judge, &mut whole_only, 0..12_000, false);
    let calm = judge.report(1_200_000);
    assert!(!calm.revert && calm.e_global < 1.0, "{}", calm.e_global);
    feed(&mut judge, &mut whole_only, 12_000..13_200, true);
    let r = judge.report(1_320_000);
    assert!(r.revert && !r.kill_switch_fired, "{:?}", r.reasons);
    assert!(r.e_global >= 100.0, "{}", r.e_global);
    let failed: Vec<Metric> = r
        .gates
        .iter()
        .filter(|g| g.verdict == GateVerdict::Fail)
        .map(|g| g.gate)
        .collect();
    assert_eq!(failed, [Metric::ErrorRate]);
    // The same events without a clock (the whole rollout's mixture alone, at π₀) stay
    // well short: the restarts begun by the looks' clock carried it.
    assert!(
        whole_only.e_value(1.2) < 100.0,
        "{}",
        whole_only.e_value(1.2)
    );
}
