//! Live aggregates per (route, version): counters and histograms updated with atomics.
//!
//! The request path holds an `Arc<VersionStats>` from its routing-table entry and adds to it
//! without a lock; the stats endpoint (and later the judge) reads a [`StatsSnapshot`].
//! Snapshots merge, so arms and replicas combine by addition.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::histogram::{AtomicHistogram, Snapshot};
use crate::types::{Outcome, Record};

/// Cost is summed in nano-dollars so that it stays an atomic integer.
const NANO_USD_PER_USD: f64 = 1e9;

#[derive(Default)]
pub(crate) struct VersionStats {
    outcomes: [AtomicU64; Outcome::ALL.len()],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    estimated: AtomicU64,
    cost_nano_usd: AtomicU64,
    schema_requests: AtomicU64,
    schema_failures: AtomicU64,
    guardrail_blocks: AtomicU64,
    latency_ms: AtomicHistogram,
    ttft_ms: AtomicHistogram,
    response_chars: AtomicHistogram,
    tokens_per_request: AtomicHistogram,
}

impl VersionStats {
    pub(crate) fn observe(&self, record: &Record) {
        self.outcomes[record.outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(record.usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(record.usage.completion_tokens, Ordering::Relaxed);
        if record.usage.estimated {
            self.estimated.fetch_add(1, Ordering::Relaxed);
        }
        self.cost_nano_usd.fetch_add(
            (record.cost_usd * NANO_USD_PER_USD).round() as u64,
            Ordering::Relaxed,
        );
        if let Some(failed) = record.schema_failed {
            self.schema_requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                self.schema_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        if record.guardrail_blocked {
            self.guardrail_blocks.fetch_add(1, Ordering::Relaxed);
        }
        self.latency_ms.record(record.latency_ms);
        if let Some(ttft) = record.ttft_ms {
            self.ttft_ms.record(ttft);
        }
        if record.outcome == Outcome::Ok {
            self.response_chars.record(record.response_chars as f64);
            self.tokens_per_request
                .record((record.usage.prompt_tokens + record.usage.completion_tokens) as f64);
        }
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            outcomes: std::array::from_fn(|i| self.outcomes[i].load(Ordering::Relaxed)),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            estimated: self.estimated.load(Ordering::Relaxed),
            cost_nano_usd: self.cost_nano_usd.load(Ordering::Relaxed),
            schema_requests: self.schema_requests.load(Ordering::Relaxed),
            schema_failures: self.schema_failures.load(Ordering::Relaxed),
            guardrail_blocks: self.guardrail_blocks.load(Ordering::Relaxed),
            latency_ms: self.latency_ms.snapshot(),
            ttft_ms: self.ttft_ms.snapshot(),
            response_chars: self.response_chars.snapshot(),
            tokens_per_request: self.tokens_per_request.snapshot(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StatsSnapshot {
    pub(crate) outcomes: [u64; Outcome::ALL.len()],
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    pub(crate) estimated: u64,
    pub(crate) cost_nano_usd: u64,
    pub(crate) schema_requests: u64,
    pub(crate) schema_failures: u64,
    pub(crate) guardrail_blocks: u64,
    pub(crate) latency_ms: Snapshot,
    pub(crate) ttft_ms: Snapshot,
    pub(crate) response_chars: Snapshot,
    pub(crate) tokens_per_request: Snapshot,
}

impl StatsSnapshot {
    pub(crate) fn requests(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    pub(crate) fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|o| self.outcomes[o.index()])
            .sum()
    }

    pub(crate) fn merge(&mut self, other: &StatsSnapshot) {
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.estimated += other.estimated;
        self.cost_nano_usd += other.cost_nano_usd;
        self.schema_requests += other.schema_requests;
        self.schema_failures += other.schema_failures;
        self.guardrail_blocks += other.guardrail_blocks;
        self.latency_ms.merge(&other.latency_ms);
        self.ttft_ms.merge(&other.ttft_ms);
        self.response_chars.merge(&other.response_chars);
        self.tokens_per_request.merge(&other.tokens_per_request);
    }

    /// The figures an operator reads, as served by the stats endpoint.
    pub(crate) fn summary(&self) -> StatsSummary {
        let requests = self.requests();
        let per_request = |total: f64| {
            if requests == 0 {
                None
            } else {
                Some(total / requests as f64)
            }
        };
        let cost_usd = self.cost_nano_usd as f64 / NANO_USD_PER_USD;
        StatsSummary {
            requests,
            errors: self.errors(),
            error_rate: per_request(self.errors() as f64),
            outcomes: Outcome::ALL
                .iter()
                .filter(|o| self.outcomes[o.index()] > 0)
                .map(|o| (o.as_str(), self.outcomes[o.index()]))
                .collect(),
            latency_ms: Quantiles::of(&self.latency_ms),
            ttft_ms: Quantiles::of(&self.ttft_ms),
            response_chars: Quantiles::of(&self.response_chars),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            tokens_per_request: per_request((self.prompt_tokens + self.completion_tokens) as f64),
            estimated_token_requests: self.estimated,
            cost_usd,
            cost_per_request_usd: per_request(cost_usd),
            schema_requests: self.schema_requests,
            schema_failures: self.schema_failures,
            schema_failure_rate: (self.schema_requests > 0)
                .then(|| self.schema_failures as f64 / self.schema_requests as f64),
            guardrail_blocks: self.guardrail_blocks,
            guardrail_block_rate: per_request(self.guardrail_blocks as f64),
        }
    }
}

/// Live figures of one version (or arm) since this process started.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct StatsSummary {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    #[schema(required = true)]
    pub(crate) error_rate: Option<f64>,
    /// Requests per outcome: `ok`, `upstream_4xx`, `upstream_5xx`, `upstream_timeout`, …
    pub(crate) outcomes: std::collections::BTreeMap<&'static str, u64>,
    pub(crate) latency_ms: Quantiles,
    pub(crate) ttft_ms: Quantiles,
    pub(crate) response_chars: Quantiles,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    #[schema(required = true)]
    pub(crate) tokens_per_request: Option<f64>,
    /// Requests whose token counts sluice estimated because the upstream sent none.
    pub(crate) estimated_token_requests: u64,
    pub(crate) cost_usd: f64,
    #[schema(required = true)]
    pub(crate) cost_per_request_usd: Option<f64>,
    /// Requests that asked for structured output, and those whose answer did not fit.
    pub(crate) schema_requests: u64,
    pub(crate) schema_failures: u64,
    #[schema(required = true)]
    pub(crate) schema_failure_rate: Option<f64>,
    pub(crate) guardrail_blocks: u64,
    #[schema(required = true)]
    pub(crate) guardrail_block_rate: Option<f64>,
}

/// Quantiles from log-scale histograms with 2 % buckets (within 1 %); null without data.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub(crate) struct Quantiles {
    pub(crate) count: u64,
    #[schema(required = true)]
    pub(crate) p50: Option<f64>,
    #[schema(required = true)]
    pub(crate) p95: Option<f64>,
    #[schema(required = true)]
    pub(crate) p99: Option<f64>,
}

impl Quantiles {
    fn of(s: &Snapshot) -> Self {
        Self {
            count: s.count(),
            p50: s.quantile(0.5),
            p95: s.quantile(0.95),
            p99: s.quantile(0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::Usage;
    use crate::types::Arm;

    fn record(outcome: Outcome, latency_ms: f64) -> Record {
        Record {
            request_id: "req_1".into(),
            at_ms: 0,
            workspace: "acme".into(),
            route: "chat".into(),
            version: "v1".into(),
            arm: Arm::Stable,
            stream: false,
            status: 200,
            outcome,
            latency_ms,
            ttft_ms: None,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                estimated: false,
            },
            cost_usd: 0.1,
            response_chars: 40,
            finish_reason: None,
            rollout_id: None,
            w: None,
            randomized: true,
            step: None,
            schema_failed: None,
            guardrail_blocked: false,
            api: crate::types::Api::Chat,
            reasoning_tokens: None,
            inputs: None,
            dimensions: None,
        }
    }

    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g / want - 1.0).abs() <= 0.01)
    }

    #[test]
    fn an_empty_version_has_no_rates_and_no_quantiles() {
        let s = VersionStats::default().snapshot().summary();
        assert_eq!((s.requests, s.errors), (0, 0));
        assert_eq!(s.error_rate, None);
        assert_eq!(s.tokens_per_request, None);
        assert_eq!(s.cost_per_request_usd, None);
        assert_eq!(s.schema_failure_rate, None);
        assert_eq!(s.guardrail_block_rate, None);
        assert_eq!((s.latency_ms.count, s.latency_ms.p50), (0, None));
        assert!(s.outcomes.is_empty());
    }

    #[test]
    fn outcomes_tokens_cost_and_rates_add_up_per_request() {
        let stats = VersionStats::default();
        stats.observe(&record(Outcome::Ok, 100.0));
        stats.observe(&Record {
            usage: Usage {
                prompt_tokens: 20,
                completion_tokens: 0,
                estimated: true,
            },
            schema_failed: Some(true),
            ..record(Outcome::Upstream5xx, 300.0)
        });
        stats.observe(&Record {
            schema_failed: Some(false),
            ..record(Outcome::ClientDisconnected, 200.0)
        });
        stats.observe(&Record {
            guardrail_blocked: true,
            ..record(Outcome::GuardrailBlocked, 1.0)
        });
        // Only the answer that came back counts its tokens: 10 + 5 of the helper's record.
        assert!(close(
            stats.snapshot().tokens_per_request.quantile(0.5),
            15.0
        ));
        let s = stats.snapshot().summary();
        assert_eq!(s.requests, 4);
        // A client leaving and a guardrail block are not the version's errors.
        assert_eq!(s.errors, 1);
        assert_eq!(s.error_rate, Some(0.25));
        assert_eq!(
            s.outcomes.into_iter().collect::<Vec<_>>(),
            [
                ("client_disconnected", 1),
                ("guardrail_blocked", 1),
                ("ok", 1),
                ("upstream_5xx", 1)
            ]
        );
        assert_eq!((s.prompt_tokens, s.completion_tokens), (50, 15));
        assert_eq!(s.tokens_per_request, Some(65.0 / 4.0));
        assert_eq!(s.estimated_token_requests, 1);
        assert!((s.cost_usd - 0.4).abs() < 1e-9, "{}", s.cost_usd);
        assert!((s.cost_per_request_usd.unwrap() - 0.1).abs() < 1e-9);
        assert_eq!((s.schema_requests, s.schema_failures), (2, 1));
        assert_eq!(s.schema_failure_rate, Some(0.5));
        assert_eq!(s.guardrail_blocks, 1);
        assert_eq!(s.guardrail_block_rate, Some(0.25));
        // Every request has a latency; only answers that came back feed the size figures.
        assert_eq!(s.latency_ms.count, 4);
        assert_eq!(s.response_chars.count, 1);
        assert!(close(s.response_chars.p50, 40.0));
        assert_eq!(s.ttft_ms.count, 0, "no request streamed a first token");
    }

    #[test]
    fn a_first_token_time_is_counted_when_there_is_one() {
        let stats = VersionStats::default();
        stats.observe(&Record {
            ttft_ms: Some(12.0),
            ..record(Outcome::Ok, 50.0)
        });
        stats.observe(&record(Outcome::Ok, 50.0));
        let s = stats.snapshot().summary();
        assert_eq!(s.ttft_ms.count, 1);
        assert!(close(s.ttft_ms.p50, 12.0));
    }

    #[test]
    fn cost_is_summed_in_nano_dollars_without_drift() {
        let stats = VersionStats::default();
        for _ in 0..1000 {
            stats.observe(&Record {
                cost_usd: 0.000_001_5,
                ..record(Outcome::Ok, 1.0)
            });
        }
        let snap = stats.snapshot();
        assert_eq!(snap.cost_nano_usd, 1_500_000);
        assert_eq!(snap.summary().cost_usd, 0.0015);
    }

    #[test]
    fn merged_snapshots_equal_one_version_that_saw_everything() {
        let (a, b, all) = (
            VersionStats::default(),
            VersionStats::default(),
            VersionStats::default(),
        );
        for i in 1..=100u64 {
            let outcome = if i.is_multiple_of(10) {
                Outcome::UpstreamTimeout
            } else {
                Outcome::Ok
            };
            // Every counter of the snapshot gets something on both sides.
            let r = Record {
                ttft_ms: Some(i as f64 / 2.0),
                response_chars: i,
                usage: Usage {
                    prompt_tokens: i,
                    completion_tokens: 2 * i,
                    estimated: i.is_multiple_of(7),
                },
                schema_failed: i.is_multiple_of(2).then_some(i.is_multiple_of(3)),
                guardrail_blocked: i.is_multiple_of(11),
                ..record(outcome, i as f64)
            };
            // Replica a has the fast half, replica b the slow half.
            (if i <= 50 { &a } else { &b }).observe(&r);
            all.observe(&r);
        }
        let mut merged = a.snapshot();
        merged.merge(&b.snapshot());
        assert_eq!(merged, all.snapshot());
        let s = merged.summary();
        assert_eq!((s.requests, s.errors), (100, 10));
        // The quantiles are the whole population's, not either half's.
        assert!(close(s.latency_ms.p50, 50.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p95, 95.0), "{:?}", s.latency_ms);
        assert!(close(s.latency_ms.p99, 99.0), "{:?}", s.latency_ms);
        assert!(close(s.ttft_ms.p95, 47.5), "{:?}", s.ttft_ms);
        assert_eq!(s.response_chars.count, 90, "timeouts have no answer");
        assert_eq!(s.estimated_token_requests, 14);
        assert_eq!((s.schema_requests, s.schema_failures), (50, 16));
        assert_eq!(s.guardrail_blocks, 9);
        assert_eq!((s.prompt_tokens, s.completion_tokens), (5050, 10100));
        // Merging into an empty snapshot changes nothing.
        let mut empty = StatsSnapshot::default();
        empty.merge(&merged);
        assert_eq!(empty, merged);
    }
}
