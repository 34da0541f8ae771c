//! Figures for the simulate table: in, every run's result per scenario (and the A/A twins
//! the baselines are tuned on); out, one [`Row`] per scenario, printed as markdown and
//! written as JSON.

use serde::Serialize;

use super::baselines::{self, Family};
use super::scenario::{Expect, Scenario};
use super::traffic::{Outcome, RunResult};
use crate::judge::spec::Metric;

/// A rate with its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Rate {
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) rate: f64,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

/// The rate k/n with its 95 % Wilson score interval (the formula lives in `eval::stats`).
pub(crate) fn wilson(k: usize, n: usize) -> Rate {
    let [lo, hi] = crate::eval::stats::wilson(k as u64, n as u64, crate::eval::stats::Z_95)
        .unwrap_or([0.0, 1.0]);
    let rate = if n == 0 { 0.0 } else { k as f64 / n as f64 };
    Rate { k, n, rate, lo, hi }
}

/// Quantile of a sample where `None` (never happened) counts as +∞.
fn quantile(values: &[Option<f64>], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].is_finite().then_some(v[i])
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delay {
    pub(crate) detected: Rate,
    /// Canary requests until revert: median and p90 over all runs (never = ∞).
    pub(crate) median: Option<f64>,
    pub(crate) p90: Option<f64>,
    /// Bad canary responses served before the revert (median over all runs).
    pub(crate) bad_median: Option<f64>,
    /// Every run's canary requests to revert (None: never), for the HTML report.
    #[serde(skip)]
    pub(crate) points: Vec<Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Baseline {
    pub(crate) family: &'static str,
    /// Failed checks needed to roll back.
    pub(crate) k: usize,
    pub(crate) threshold: f64,
    /// Its false-rollback rate on the A/A twin at that threshold.
    pub(crate) twin_false_rollbacks: Rate,
    pub(crate) delay: Delay,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) description: String,
    pub(crate) expect: &'static str,
    pub(crate) runs: usize,
    pub(crate) reverted: Rate,
    pub(crate) promoted: Rate,
    pub(crate) inconclusive: Rate,
    pub(crate) kill_switch: usize,
    pub(crate) delay: Delay,
    /// Minutes until the canary reached 100 % (median over promoted runs).
    pub(crate) time_to_100_min: Option<f64>,
    pub(crate) baselines: Vec<Baseline>,
    /// Our median canary requests ÷ the best tuned baseline's.
    pub(crate) ratio_to_best_baseline: Option<f64>,
    /// The policy's α.
    pub(crate) alpha: f64,
    /// A few runs' e-value paths (minute, E), for the HTML report.
    #[serde(skip)]
    pub(crate) e_paths: Vec<Vec<(f64, f64)>>,
}

fn delay_of(points: &[Option<(u64, u64)>]) -> Delay {
    let req: Vec<Option<f64>> = points.iter().map(|p| p.map(|(c, _)| c as f64)).collect();
    let bad: Vec<Option<f64>> = points.iter().map(|p| p.map(|(_, b)| b as f64)).collect();
    Delay {
        detected: wilson(points.iter().filter(|p| p.is_some()).count(), points.len()),
        median: quantile(&req, 0.5),
        p90: quantile(&req, 0.9),
        bad_median: quantile(&bad, 0.5),
        points: req,
    }
}

pub(crate) fn row(
    s: &Scenario,
    runs: &[RunResult],
    twin: Option<&[RunResult]>,
    target: f64,
) -> Row {
    let n = runs.len();
    let count = |o: Outcome| runs.iter().filter(|r| r.outcome == o).count();
    let points: Vec<Option<(u64, u64)>> = runs
        .iter()
        .map(|r| (r.outcome == Outcome::Reverted).then_some((r.canary_requests, r.bad_canary)))
        .collect();
    let promoted_min: Vec<Option<f64>> = runs
        .iter()
        .filter(|r| r.outcome == Outcome::Promoted)
        .map(|r| Some(r.at_ms as f64 / 60_000.0))
        .collect();
    let delay = delay_of(&points);
    let out_baselines = match (twin, s.baseline_metric) {
        (Some(twin), Some(metric)) => [Family::Flagger, Family::Argo]
            .into_iter()
            .filter_map(|family| best_baseline(family, metric, runs, twin, target))
            .collect(),
        _ => Vec::new(),
    };
    let best = out_baselines
        .iter()
        .filter_map(|b| b.delay.median)
        .fold(f64::INFINITY, f64::min);
    let ratio = match delay.median {
        Some(ours) if best.is_finite() => Some(ours / best),
        _ => None,
    };
    Row {
        scenario: s.name.clone(),
        description: s.description.clone(),
        expect: match s.expect {
            Expect::Pass => "pass",
            Expect::Revert => "revert",
            Expect::NoDecision => "no decision",
        },
        runs: n,
        reverted: wilson(count(Outcome::Reverted), n),
        promoted: wilson(count(Outcome::Promoted), n),
        inconclusive: wilson(count(Outcome::Inconclusive), n),
        kill_switch: runs.iter().filter(|r| r.kill_switch).count(),
        delay,
        time_to_100_min: quantile(&promoted_min, 0.5),
        baselines: out_baselines,
        ratio_to_best_baseline: ratio,
        alpha: s.policy.alpha,
        e_paths: e_paths(runs),
    }
}

/// The baseline of `family` on `metric` that reverts soonest (median canary requests),
/// over its choices of k, each tuned on the A/A `twin` to `target` false rollbacks.
fn best_baseline(
    family: Family,
    metric: Metric,
    runs: &[RunResult],
    twin: &[RunResult],
    target: f64,
) -> Option<Baseline> {
    let null: Vec<&[baselines::Check]> = twin.iter().map(|r| r.checks.of(family, metric)).collect();
    family
        .ks()
        .iter()
        .map(|&k| {
            let t = baselines::tune(&null, k, target);
            let twin_fired = null
                .iter()
                .filter(|c| baselines::fires(c, k, t).is_some())
                .count();
            let pts: Vec<Option<(u64, u64)>> = runs
                .iter()
                .map(|r| {
                    baselines::fires(r.checks.of(family, metric), k, t)
                        .map(|c| (c.canary_requests, c.bad_canary))
                })
                .collect();
            Baseline {
                family: family.name(),
                k,
                threshold: t,
                twin_false_rollbacks: wilson(twin_fired, null.len()),
                delay: delay_of(&pts),
            }
        })
        .min_by(|a, b| {
            let key = |x: &Baseline| x.delay.median.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        })
}

/// The first six runs' e-value paths, in minutes.
fn e_paths(runs: &[RunResult]) -> Vec<Vec<(f64, f64)>> {
    runs.iter()
        .take(6)
        .map(|r| {
            r.e_path
                .iter()
                .map(|&(t, e)| (t as f64 / 60_000.0, e))
                .collect()
        })
        .collect()
}

fn pct(r: &Rate) -> String {
    format!(
        "{:.2} % [{:.2}, {:.2}]",
        100.0 * r.rate,
        100.0 * r.lo,
        100.0 * r.hi
    )
}

fn num(x: Option<f64>) -> String {
    x.map_or("—".into(), |x| format!("{x:.0}"))
}

pub(crate) fn markdown(rows: &[Row], alpha_note: &str) -> String {
    let mut out = String::new();
    out.push_str(alpha_note);
    out.push_str("\n\n| scenario | expect | runs | reverted (95 % CI) | promoted | inconclusive | canary req. to revert, median / p90 | bad served before revert (median) | time to 100 % (median) | Flagger-style tuned: k, median / p90 | Argo-style tuned: k, median / p90 | ours ÷ best baseline |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let base = |fam: &str| {
            r.baselines
                .iter()
                .find(|b| b.family == fam)
                .map_or("—".into(), |b| {
                    format!(
                        "k={} (A/A {:.1} %): {} / {}",
                        b.k,
                        100.0 * b.twin_false_rollbacks.rate,
                        num(b.delay.median),
                        num(b.delay.p90)
                    )
                })
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % | {:.1} % | {} / {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.expect,
            r.runs,
            pct(&r.reverted),
            100.0 * r.promoted.rate,
            100.0 * r.inconclusive.rate,
            num(r.delay.median),
            num(r.delay.p90),
            num(r.delay.bad_median),
            r.time_to_100_min
                .map_or("—".into(), |m| format!("{m:.0} min")),
            base("Flagger-style"),
            base("Argo-style"),
            r.ratio_to_best_baseline
                .map_or("—".into(), |x| format!("{x:.2}")),
        ));
    }
    out
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const W: f64 = 640.0;
const LEFT: f64 = 150.0;

/// log10 position of `x` on an axis from 10^lo to 10^hi, in pixels.
fn log_x(x: f64, lo: f64, hi: f64) -> f64 {
    let v = x.max(10f64.powf(lo)).log10();
    LEFT + (W - LEFT - 20.0) * ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
}

/// One row per judge: its canary requests to revert as a box (p25–p75), whiskers
/// (p10–p90), a median tick and every run as a faint dot; never-reverted runs are
/// counted at the right.
fn delay_svg(series: &[(String, &[Option<f64>])]) -> String {
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, p)| p.iter().flatten().copied())
        .collect();
    if all.is_empty() {
        return String::new();
    }
    let axis = LogAxis::spanning(&all);
    let row_h = 34.0;
    let h = 30.0 + row_h * series.len() as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    axis.draw_decades(&mut out, h);
    for (i, (name, points)) in series.iter().enumerate() {
        let y = 10.0 + row_h * i as f64 + row_h / 2.0;
        delay_row(&mut out, &axis, y, name, points);
    }
    out.push_str("</svg>");
    out
}

/// A log₁₀ x axis over whole decades: `lo` and `hi` are exponents.
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// The decades around `values`, from at most 1 to at least 10, one decade at least.
    fn spanning(values: &[f64]) -> LogAxis {
        let lo = values
            .iter()
            .cloned()
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            .log10()
            .floor();
        let hi = values
            .iter()
            .cloned()
            .fold(0.0, f64::max)
            .max(10.0)
            .log10()
            .ceil()
            .max(lo + 1.0);
        LogAxis { lo, hi }
    }

    fn x(&self, value: f64) -> f64 {
        log_x(value, self.lo, self.hi)
    }

    /// A grid line and a label at each power of ten, in a chart `h` high.
    fn draw_decades(&self, out: &mut String, h: f64) {
        let mut d = self.lo;
        while d <= self.hi + 1e-9 {
            let x = self.x(10f64.powf(d));
            out.push_str(&format!(
                r##"<line x1="{x:.1}" y1="5" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                h - 18.0,
                h - 5.0,
                10f64.powf(d) as u64
            ));
            d += 1.0;
        }
    }
}

/// One judge's row of [`delay_svg`], centred at `y`.
fn delay_row(out: &mut String, axis: &LogAxis, y: f64, name: &str, points: &[Option<f64>]) {
    let mut v: Vec<f64> = points.iter().flatten().copied().collect();
    v.sort_by(f64::total_cmp);
    let never = points.len() - v.len();
    out.push_str(&format!(
        r#"<text x="4" y="{:.1}">{} (n={})</text>"#,
        y + 4.0,
        esc(name),
        points.len()
    ));
    let q = |p: f64| quantile(points, p);
    for x in v.iter().step_by((v.len() / 200).max(1)) {
        out.push_str(&format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="#4477aa" fill-opacity="0.25"/>"##,
            axis.x(*x),
            y + 9.0
        ));
    }
    if let (Some(p10), Some(p25), Some(p50)) = (q(0.1), q(0.25), q(0.5)) {
        let (x10, x25, x50) = (axis.x(p10), axis.x(p25), axis.x(p50));
        let x75 = q(0.75).map_or(W - 20.0, |x| axis.x(x));
        let x90 = q(0.9).map_or(W - 20.0, |x| axis.x(x));
        out.push_str(&format!(
            r##"<line x1="{x10:.1}" y1="{y:.1}" x2="{x90:.1}" y2="{y:.1}" stroke="#333"/><rect x="{x25:.1}" y="{:.1}" width="{:.1}" height="12" fill="#88ccee" stroke="#333"/><line x1="{x50:.1}" y1="{:.1}" x2="{x50:.1}" y2="{:.1}" stroke="#000" stroke-width="2"/>"##,
            y - 6.0,
            (x75 - x25).max(1.0),
            y - 7.0,
            y + 7.0
        ));
    }
    if never > 0 {
        out.push_str(&format!(
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#aa3377">{never} never</text>"##,
            W - 2.0,
            y - 8.0
        ));
    }
}

/// The false-rollback (or revert) rate with its 95 % interval against α.
fn rate_svg(r: &Rate, alpha: f64, harmless: bool) -> String {
    let top = if harmless {
        (3.0 * alpha).max(r.hi * 1.2).min(1.0)
    } else {
        1.0
    };
    let x = |v: f64| LEFT + (W - LEFT - 20.0) * (v / top).clamp(0.0, 1.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="44" font-family="sans-serif" font-size="11"><text x="4" y="20">{}</text>"#,
        if harmless {
            "false rollbacks"
        } else {
            "reverted"
        }
    );
    out.push_str(&format!(
        r##"<line x1="{:.1}" y1="14" x2="{:.1}" y2="14" stroke="#333"/><line x1="{:.1}" y1="8" x2="{:.1}" y2="20" stroke="#333"/><line x1="{:.1}" y1="8" x2="{:.1}" y2="20" stroke="#333"/><circle cx="{:.1}" cy="14" r="4" fill="#4477aa"/>"##,
        x(r.lo),
        x(r.hi),
        x(r.lo),
        x(r.lo),
        x(r.hi),
        x(r.hi),
        x(r.rate)
    ));
    if harmless {
        out.push_str(&format!(
            r##"<line x1="{0:.1}" y1="2" x2="{0:.1}" y2="26" stroke="#cc3311" stroke-dasharray="3,2"/><text x="{0:.1}" y="38" text-anchor="middle" fill="#cc3311">α = {1}</text>"##,
            x(alpha),
            alpha
        ));
    }
    out.push_str(&format!(
        r#"<text x="{:.1}" y="38">{:.2} % [{:.2}, {:.2}], {} of {}</text></svg>"#,
        LEFT,
        100.0 * r.rate,
        100.0 * r.lo,
        100.0 * r.hi,
        r.k,
        r.n
    ));
    out
}

/// A few runs' e-value paths (log scale) against 1/α.
fn paths_svg(paths: &[Vec<(f64, f64)>], alpha: f64) -> String {
    let pts: Vec<&(f64, f64)> = paths.iter().flatten().collect();
    if pts.is_empty() {
        return String::new();
    }
    let t_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = (-3.0f64, (1.0 / alpha).log10() + 1.0);
    let (h, left) = (160.0, 40.0);
    let x = |t: f64| left + (W - left - 10.0) * t / t_max;
    let y = |e: f64| {
        let v = e.max(1e-300).log10().clamp(lo, hi);
        10.0 + (h - 30.0) * (hi - v) / (hi - lo)
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    for d in [lo as i32, 0, (1.0 / alpha).log10() as i32] {
        out.push_str(&format!(
            r##"<text x="2" y="{:.1}">1e{d}</text><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            y(10f64.powi(d)) + 4.0,
            y(10f64.powi(d)),
            W - 10.0,
            y(10f64.powi(d))
        ));
    }
    out.push_str(&format!(
        r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#cc3311" stroke-dasharray="4,3"/><text x="{1:.1}" y="{2:.1}" text-anchor="end" fill="#cc3311">1/α</text><text x="{3:.1}" y="{4:.1}" text-anchor="end">minutes → {5:.0}</text>"##,
        y(1.0 / alpha),
        W - 10.0,
        y(1.0 / alpha) - 3.0,
        W - 10.0,
        h - 4.0,
        t_max
    ));
    let colours = [
        "#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377",
    ];
    for (i, p) in paths.iter().enumerate() {
        let d: Vec<String> = p
            .iter()
            .map(|&(t, e)| format!("{:.1},{:.1}", x(t), y(e)))
            .collect();
        out.push_str(&format!(
            r#"<polyline fill="none" stroke="{}" stroke-width="1.2" points="{}"/>"#,
            colours[i % colours.len()],
            d.join(" ")
        ));
    }
    out.push_str("</svg>");
    out
}

/// The whole report: one self-contained page (inline SVG, no script, no network).
pub(crate) fn html(rows: &[Row], note: &str) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sluice simulate</title><style>body{font-family:sans-serif;max-width:720px;margin:2em auto;color:#222}h2{font-size:1.05em;margin-top:2em;border-top:1px solid #ccc;padding-top:1em}p.d{color:#555}</style></head><body><h1>sluice simulate</h1>",
    );
    out.push_str(&format!("<p>{}</p>", esc(note)));
    for r in rows {
        out.push_str(&format!(
            "<h2>{}</h2><p class=\"d\">{} — expect {}, {} runs; promoted {:.1} %, inconclusive {:.1} %, kill switch {}</p>",
            esc(&r.scenario),
            esc(&r.description),
            r.expect,
            r.runs,
            100.0 * r.promoted.rate,
            100.0 * r.inconclusive.rate,
            r.kill_switch
        ));
        out.push_str(&rate_svg(&r.reverted, r.alpha, r.expect != "revert"));
        if r.expect == "revert" {
            let mut series: Vec<(String, &[Option<f64>])> =
                vec![("sluice".to_string(), r.delay.points.as_slice())];
            for b in &r.baselines {
                series.push((format!("{} k={}", b.family, b.k), b.delay.points.as_slice()));
            }
            out.push_str("<p>Canary requests to revert (log scale; box p25–p75, whiskers p10–p90, tick = median):</p>");
            out.push_str(&delay_svg(&series));
        }
        if !r.e_paths.is_empty() {
            out.push_str("<p>E-value paths of the first runs against 1/α:</p>");
            out.push_str(&paths_svg(&r.e_paths, r.alpha));
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wilson_interval_matches_the_textbook_value() {
        // 10 of 100: centre (0.1 + 1.9208/100)/1.038415 = 0.114799, half-width
        // 1.96·sqrt(0.0009 + 0.0000960)/1.038415 = 0.059575 → [0.0552, 0.1744].
        let r = wilson(10, 100);
        assert!(
            (r.lo - 0.0552).abs() < 1e-3 && (r.hi - 0.1744).abs() < 1e-3,
            "{r:?}"
        );
    }

    #[test]
    fn the_html_report_is_one_page_without_script_or_network() {
        let r = wilson(3, 100);
        let page = html(&[], "note <b>");
        assert!(page.contains("note &lt;b&gt;"));
        let svg = rate_svg(&r, 0.01, true);
        assert!(svg.contains("α = 0.01") && svg.starts_with("<svg"));
        let paths = paths_svg(&[vec![(0.0, 1.0), (1.0, 150.0)]], 0.01);
        assert!(paths.contains("polyline") && paths.contains("1/α"));
        let delays = delay_svg(&[("sluice".into(), &[Some(100.0), Some(200.0), None][..])]);
        assert!(delays.contains("1 never"), "{delays}");
        for s in [page, svg, paths, delays] {
            assert!(
                !s.contains("<script") && !s.contains("http://")
                    || s.contains("xmlns=\"http://www.w3.org/2000/svg\"")
            );
            assert!(!s.contains("<script") && !s.contains("https://"));
        }
    }

    #[test]
    fn runs_that_never_reverted_count_as_infinitely_slow() {
        let q = quantile(&[Some(1.0), None, None], 0.5);
        assert_eq!(q, None);
        assert_eq!(quantile(&[Some(1.0), Some(3.0), None], 0.5), Some(3.0));
    }
}
