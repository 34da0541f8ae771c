//! The report's charts as inline SVG strings: overlaid length histograms, grouped bars per
//! category, and a pair of bars per figure. A is always blue and B orange.

use std::fmt::Write;

use super::compare::VersionFigures;
use super::stats::LengthBin;

pub(crate) const COLOR_A: &str = "#4c78a8";
pub(crate) const COLOR_B: &str = "#f58518";
pub(crate) const CHART_WIDTH: f64 = 560.0;
const CHART_HEIGHT: f64 = 220.0;
/// Room left of, and below, a chart's plot area for its labels.
const MARGIN_LEFT: f64 = 56.0;
const MARGIN_BOTTOM: f64 = 48.0;
const MARGIN_TOP: f64 = 24.0;

/// Both versions' length histograms overlaid on the shared bins (B drawn over A, both
/// translucent so overlap shows).
pub(crate) fn histogram(bins: &[LengthBin]) -> String {
    if bins.is_empty() {
        return empty_chart("No answers to bin.");
    }
    let totals = [0, 1].map(|v| bins.iter().map(|b| b.counts[v]).sum::<u64>().max(1) as f64);
    // Shares, not counts: the versions may have answered different numbers of requests.
    let share = |b: &LengthBin, v: usize| b.counts[v] as f64 / totals[v];
    let top = bins
        .iter()
        .flat_map(|b| [share(b, 0), share(b, 1)])
        .fold(0.0, f64::max)
        .max(1e-9);
    let (plot_w, plot_h) = plot_size();
    let step = plot_w / bins.len() as f64;
    let mut svg = svg_open();
    axis(&mut svg, top, |y| format!("{:.0} %", 100.0 * y));
    for (i, bin) in bins.iter().enumerate() {
        let x = MARGIN_LEFT + i as f64 * step;
        for (v, color) in [(0, COLOR_A), (1, COLOR_B)] {
            let h = plot_h * share(bin, v) / top;
            let _ = write!(
                svg,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{color}\" fill-opacity=\"0.55\">\
                 <title>{:.0}–{:.0} chars: {} answers</title></rect>",
                x + 1.0,
                MARGIN_TOP + plot_h - h,
                (step - 2.0).max(1.0),
                bin.lo_chars,
                bin.hi_chars,
                bin.counts[v]
            );
        }
        // Label every other bin when they are many, so labels do not overlap.
        let every = bins.len().div_ceil(12).max(1);
        if i % every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                x + step / 2.0,
                MARGIN_TOP + plot_h + 14.0,
                short_number(bin.lo_chars)
            );
        }
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">lower bound of the bin (characters), share of each version's answers</text></svg>",
        MARGIN_LEFT + plot_w / 2.0,
        CHART_HEIGHT - 8.0
    );
    svg
}

/// Grouped vertical bars: per category, A's bar then B's.
pub(crate) fn grouped_bars(
    categories: &[String],
    values: &[Vec<f64>; 2],
    fmt: fn(f64) -> String,
) -> String {
    if categories.is_empty() {
        return empty_chart("Nothing to show.");
    }
    let top = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    let (plot_w, plot_h) = plot_size();
    let step = plot_w / categories.len() as f64;
    let bar = (step * 0.38).min(60.0);
    let mut svg = svg_open();
    axis(&mut svg, top, fmt);
    for (i, category) in categories.iter().enumerate() {
        let centre = MARGIN_LEFT + (i as f64 + 0.5) * step;
        for (v, color) in [(0, COLOR_A), (1, COLOR_B)] {
            let value = values[v].get(i).copied().unwrap_or(0.0);
            let h = plot_h * value / top;
            let x = if v == 0 {
                centre - bar - 1.0
            } else {
                centre + 1.0
            };
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{color}\"><title>{}: {}</title></rect>",
                MARGIN_TOP + plot_h - h,
                esc(category),
                fmt(value)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{centre:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            MARGIN_TOP + plot_h + 14.0,
            esc(category)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One figure per version, as two labelled bars.
pub(crate) fn small_bars(
    a: &VersionFigures,
    b: &VersionFigures,
    values: &[Vec<f64>; 2],
    fmt: fn(f64) -> String,
) -> String {
    let names = [a.name.clone(), b.name.clone()];
    let top = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-12);
    let (w, h) = (260.0, 150.0);
    let plot_h = h - 50.0;
    let mut svg =
        format!("<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">");
    for (v, color) in [(0, COLOR_A), (1, COLOR_B)] {
        let value = values[v].first().copied().unwrap_or(0.0);
        let bar_h = plot_h * value / top;
        let x = 40.0 + v as f64 * 100.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"70\" height=\"{bar_h:.1}\" fill=\"{color}\"></rect>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            20.0 + plot_h - bar_h,
            x + 35.0,
            14.0 + plot_h - bar_h,
            fmt(value),
            x + 35.0,
            h - 12.0,
            esc(&names[v])
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plot_size() -> (f64, f64) {
    (
        CHART_WIDTH - MARGIN_LEFT - 12.0,
        CHART_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
    )
}

fn svg_open() -> String {
    format!(
        "<svg width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\">"
    )
}

/// The y axis: a base line and ticks at 0, ½ and the top.
fn axis(svg: &mut String, top: f64, fmt: impl Fn(f64) -> String) {
    let (plot_w, plot_h) = plot_size();
    for frac in [0.0, 0.5, 1.0] {
        let y = MARGIN_TOP + plot_h * (1.0 - frac);
        let _ = write!(
            svg,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e3e6eb\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            MARGIN_LEFT + plot_w,
            MARGIN_LEFT - 6.0,
            y + 4.0,
            esc(&fmt(top * frac))
        );
    }
}

fn empty_chart(message: &str) -> String {
    format!(
        "<svg width=\"{CHART_WIDTH}\" height=\"60\" role=\"img\"><text x=\"8\" y=\"30\">{}</text></svg>",
        esc(message)
    )
}

fn short_number(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
