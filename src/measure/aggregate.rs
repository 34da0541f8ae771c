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
pub struct VersionStats {
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
    pub fn observe(&self, record: &Record) {
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

    pub fn snapshot(&self) -> StatsSnapshot {
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
pub struct StatsSnapshot {
    pub outcomes: [u64; Outcome::ALL.len()],
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub estimated: u64,
    pub cost_nano_usd: u64,
    pub schema_requests: u64,
    pub schema_failures: u64,
    pub guardrail_blocks: u64,
    pub latency_ms: Snapshot,
    pub ttft_ms: Snapshot,
    pub response_chars: Snapshot,
    pub tokens_per_request: Snapshot,
}

impl StatsSnapshot {
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    pub fn errors(&self) -> u64 {
        Outcome::ALL
            .iter()
            .filter(|o| o.is_error())
            .map(|o| self.outcomes[o.index()])
            .sum()
    }

    pub fn merge(&mut self, other: &StatsSnapshot) {
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
    pub fn summary(&self) -> StatsSummary {
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatsSummary {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: Option<f64>,
    pub outcomes: std::collections::BTreeMap<&'static str, u64>,
    pub latency_ms: Quantiles,
    pub ttft_ms: Quantiles,
    pub response_chars: Quantiles,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tokens_per_request: Option<f64>,
    /// Requests whose token counts sluice estimated because the upstream sent none.
    pub estimated_token_requests: u64,
    pub cost_usd: f64,
    pub cost_per_request_usd: Option<f64>,
    /// Requests that asked for structured output, and those whose answer did not fit.
    pub schema_requests: u64,
    pub schema_failures: u64,
    pub schema_failure_rate: Option<f64>,
    pub guardrail_blocks: u64,
    pub guardrail_block_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quantiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
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
