//! Limits per workspace: a request rate (governor's GCRA, with a burst), and budgets of
//! tokens per minute and USD per UTC day counted from the measurement records.
//!
//! In: the caller's workspace before a request is served, and every finished record.
//! Out: pass, or `ApiError::RateLimited` with the seconds to wait (`Retry-After`).
//! Limits live in the database (`PUT /admin/v1/workspaces/{id}/limits`), with defaults
//! from `[limits]` in the config. With several replicas (a cluster on PostgreSQL), each
//! enforces its share of every limit: the limit divided by the live replicas (`set_share`,
//! kept current by the heartbeat), which holds the cluster to the limit when the load
//! balancer spreads a workspace's requests evenly. See docs/cluster.md for why and how exact.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::types::{Limits, Record, now_ms};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// What a workspace used in the current minute and day.
#[derive(Default)]
struct Spend {
    minute: i64,
    tokens: u64,
    day: i64,
    usd: f64,
}

struct Workspace {
    /// What the admin API set (before the defaults fill in).
    own: Limits,
    limits: Limits,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Every workspace's limits and what it has used of them, in this process.
pub struct LimitBook {
    defaults: Limits,
    /// Workspaces with limits of their own, and the rate limiters built from them.
    workspaces: RwLock<HashMap<String, Arc<Workspace>>>,
    /// The defaults' rate limiter, one per workspace that has none of its own.
    default_rates: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    spend: Mutex<HashMap<String, Spend>>,
    /// Live replicas sharing the limits (1 alone): each enforces 1/share of every limit.
    share: std::sync::atomic::AtomicU32,
}

/// This replica's share of `limits` when `share` replicas enforce them together: the rate
/// and budgets divided, the burst divided and rounded up. Only the token and USD budgets are
/// enforced from it; the request rate is charged per request instead (`cost`).
fn share_of(limits: &Limits, share: u32) -> Limits {
    if share <= 1 {
        return *limits;
    }
    let n = f64::from(share);
    Limits {
        requests_per_second: limits.requests_per_second.map(|r| r / n),
        burst: limits
            .burst
            .or_else(|| limits.requests_per_second.map(|r| r.ceil().max(1.0) as u32))
            .map(|b| b.div_ceil(share).max(1)),
        tokens_per_minute: limits
            .tokens_per_minute
            .map(|t| t.div_ceil(u64::from(share))),
        usd_per_day: limits.usd_per_day.map(|u| u / n),
    }
}

/// The rate limiter of a whole (undivided) limit. A replica that shares it with `n - 1`
/// others charges each request `n` cells of it (`cost`), which is the same as its own bucket
/// of rate R/n and burst B/n, but kept in the whole limit's units: when the live count
/// changes, what is left in the bucket stays left. Rebuilt buckets would start full, and
/// every change of the count (a heartbeat missed under load is enough) would hand every
/// replica a fresh burst; the cluster then admitted more than its limit.
///
/// Its capacity is the burst, or `share` cells when the burst is smaller (one request per
/// replica must fit); such a limiter is the only one rebuilt when the share changes.
fn limiter(limits: &Limits, share: u32) -> Option<DefaultDirectRateLimiter> {
    let rps = limits.requests_per_second?;
    let burst = NonZeroU32::new(burst_of(limits)?.max(share))?;
    let period = Duration::from_secs_f64(1.0 / rps);
    let quota = Quota::with_period(period)?.allow_burst(burst);
    Some(RateLimiter::direct(quota))
}

/// The burst of `limits`: as set, or the rate rounded up.
fn burst_of(limits: &Limits) -> Option<u32> {
    let rps = limits.requests_per_second?;
    Some(limits.burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32))
}

/// Whether a limiter built for `limits` must be rebuilt when the share goes from `before`
/// to `after`: only when its burst is smaller than either (its capacity depends on the share).
fn rebuilt_on_share_change(limits: &Limits, before: u32, after: u32) -> bool {
    burst_of(limits).is_some_and(|b| b < before.max(after))
}

impl LimitBook {
    /// A book where workspaces without limits of their own get `defaults`.
    pub fn new(defaults: Limits) -> Self {
        Self {
            defaults,
            workspaces: RwLock::default(),
            default_rates: Mutex::default(),
            spend: Mutex::default(),
            share: std::sync::atomic::AtomicU32::new(1),
        }
    }

    /// Sets how many replicas share the limits. The rate limiters stay as they are: each
    /// request is charged its replica's share of the whole limit (see `limiter`).
    pub fn set_share(&self, replicas: u32) {
        let after = replicas.max(1);
        let before = self.share.swap(after, std::sync::atomic::Ordering::Relaxed);
        if before == after {
            return;
        }
        // A burst smaller than the replica count: the limiter's capacity follows the share.
        let small: Vec<(String, Limits)> = {
            let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(_, w)| rebuilt_on_share_change(&w.limits, before, after))
                .map(|(name, w)| (name.clone(), w.own))
                .collect()
        };
        for (workspace, own) in small {
            self.set(&workspace, own);
        }
        if rebuilt_on_share_change(&self.defaults, before, after) {
            self.default_rates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }

    fn share(&self) -> u32 {
        self.share.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limits the admin API set for `workspace`, if any.
    pub(crate) fn own_limits(&self, workspace: &str) -> Option<Limits> {
        let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
        map.get(workspace).map(|w| w.own)
    }

    /// Sets a workspace's own limits (what is left out falls back to the defaults); its
    /// rate limiter starts with the whole burst (of this replica's share) available.
    pub(crate) fn set(&self, workspace: &str, limits: Limits) {
        let own = limits;
        let limits = limits.over(self.defaults);
        let entry = Arc::new(Workspace {
            rate: limiter(&limits, self.share()),
            own,
            limits,
        });
        let mut map = self.workspaces.write().unwrap_or_else(|e| e.into_inner());
        map.insert(workspace.to_owned(), entry);
    }

    pub(crate) fn limits_of(&self, workspace: &str) -> Limits {
        let map = self.workspaces.read().unwrap_or_else(|e| e.into_inner());
        map.get(workspace).map_or(self.defaults, |w| w.limits)
    }

    /// Admits one request of `workspace`, or says how long to wait.
    pub(crate) fn admit(&self, workspace: &str) -> Result<(), ApiError> {
        let own = self
            .workspaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(workspace)
            .cloned();
        let full = own.as_ref().map_or(self.defaults, |w| w.limits);
        let limits = share_of(&full, self.share());
        let now = now_ms();
        {
            let spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = spend.get(workspace) {
                if let Some(max) = limits.tokens_per_minute
                    && s.minute == now / MINUTE_MS
                    && s.tokens >= max
                {
                    let wait = MINUTE_MS - now % MINUTE_MS;
                    let max = full.tokens_per_minute.unwrap_or(max);
                    return Err(rate_limited(
                        "tokens_per_minute",
                        format!("{max} tokens per minute"),
                        wait,
                    ));
                }
                if let Some(max) = limits.usd_per_day
                    && s.day == now / DAY_MS
                    && s.usd >= max
                {
                    let wait = DAY_MS - now % DAY_MS;
                    let max = full.usd_per_day.unwrap_or(max);
                    return Err(rate_limited(
                        "usd_per_day",
                        format!("{max} USD per day"),
                        wait,
                    ));
                }
            }
        }
        // A request costs its replica's share of the whole limit (see `limiter`). The
        // fallback serves the moment between a share change and the rebuild of a limiter
        // whose capacity was smaller than the new share.
        let n = NonZeroU32::new(self.share()).unwrap_or(NonZeroU32::MIN);
        let verdict = match own.as_ref().and_then(|w| w.rate.as_ref()) {
            Some(rate) => rate.check_n(n).unwrap_or_else(|_| rate.check()),
            None if limits.requests_per_second.is_some() => {
                let rate = {
                    let mut rates = self.default_rates.lock().unwrap_or_else(|e| e.into_inner());
                    match rates.get(workspace) {
                        Some(rate) => rate.clone(),
                        None => {
                            let Some(rate) = limiter(&full, self.share()) else {
                                return Ok(());
                            };
                            let rate = Arc::new(rate);
                            rates.insert(workspace.to_owned(), rate.clone());
                            rate
                        }
                    }
                };
                rate.check_n(n).unwrap_or_else(|_| rate.check())
            }
            None => return Ok(()),
        };
        verdict.map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let rps = full.requests_per_second.unwrap_or_default();
            rate_limited(
                "requests",
                format!("{rps} requests per second"),
                wait.as_millis() as i64,
            )
        })
    }

    /// Adds a finished request's tokens and cost to its workspace's minute and day.
    pub(crate) fn spend(&self, record: &Record) {
        let now = record.at_ms;
        let mut spend = self.spend.lock().unwrap_or_else(|e| e.into_inner());
        let s = spend.entry(record.workspace.clone()).or_default();
        if s.minute != now / MINUTE_MS {
            s.minute = now / MINUTE_MS;
            s.tokens = 0;
        }
        if s.day != now / DAY_MS {
            s.day = now / DAY_MS;
            s.usd = 0.0;
        }
        // Saturating: counts are bounded (`MAX_REPORTED_TOKENS`), a minute's sum need not be.
        s.tokens = s
            .tokens
            .saturating_add(record.usage.prompt_tokens)
            .saturating_add(record.usage.completion_tokens);
        s.usd += record.cost_usd;
    }
}

fn rate_limited(kind: &'static str, limit: String, wait_ms: i64) -> ApiError {
    ApiError::RateLimited {
        kind,
        limit,
        retry_after_s: ((wait_ms.max(0) as f64) / 1000.0).ceil().max(1.0) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let book = LimitBook::new(Limits::default());
        book.set(
            "acme",
            Limits {
                requests_per_second: Some(1.0),
                burst: Some(3),
                ..Limits::default()
            },
        );
        let passed = (0..5).filter(|_| book.admit("acme").is_ok()).count();
        assert_eq!(passed, 3);
        match book.admit("acme") {
            Err(ApiError::RateLimited {
                retry_after_s,
                kind,
                ..
            }) => {
                assert_eq!(kind, "requests");
                assert!((1..=2).contains(&retry_after_s));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            book.admit("other").is_ok(),
            "no limits, no default: unlimited"
        );
    }

    #[test]
    fn three_replicas_each_admit_a_third_of_the_burst() {
        let book = LimitBook::new(Limits::default());
        book.set(
            "acme",
            Limits {
                requests_per_second: Some(0.001),
                burst: Some(9),
                ..Limits::default()
            },
        );
        book.set_share(3);
        assert_eq!((0..9).filter(|_| book.admit("acme").is_ok()).count(), 3);
        book.set_share(1);
        assert_eq!(
            (0..12).filter(|_| book.admit("acme").is_ok()).count(),
            0,
            "alone again: the burst the cluster used is still used"
        );
    }

    #[test]
    fn what_is_left_of_a_burst_stays_left_when_the_replica_count_changes() {
        let book = LimitBook::new(Limits::default());
        book.set(
            "acme",
            Limits {
                requests_per_second: Some(0.001),
                burst: Some(6),
                ..Limits::default()
            },
        );
        assert_eq!((0..3).filter(|_| book.admit("acme").is_ok()).count(), 3);
        // Half the burst is left; a third of the cluster's half is one request.
        book.set_share(3);
        assert_eq!((0..6).filter(|_| book.admit("acme").is_ok()).count(), 1);
    }

    #[test]
    fn a_burst_smaller_than_the_replica_count_still_admits_one_per_replica() {
        let book = LimitBook::new(Limits::default());
        book.set(
            "acme",
            Limits {
                requests_per_second: Some(0.001),
                burst: Some(2),
                ..Limits::default()
            },
        );
        book.set_share(5);
        assert_eq!((0..4).filter(|_| book.admit("acme").is_ok()).count(), 1);
    }

    #[test]
    fn a_burst_smaller_than_the_replica_count_keeps_each_replica_to_its_share_of_the_rate() {
        // A rate slow enough that no cell refills while the test runs (one per 33 s): what is
        // checked does not depend on how fast the machine is.
        let book = LimitBook::new(Limits::default());
        book.set_share(3);
        book.set(
            "acme",
            Limits {
                requests_per_second: Some(0.03),
                burst: Some(1),
                ..Limits::default()
            },
        );
        assert!(book.admit("acme").is_ok(), "one request per replica fits");
        // 0.03/s for three replicas is one request per 100 s here; the whole rate would
        // allow the next one after 33 s (and a bucket charged one cell, at once).
        match book.admit("acme") {
            Err(ApiError::RateLimited { retry_after_s, .. }) => assert!(
                (50..=100).contains(&retry_after_s),
                "told to retry after {retry_after_s} s, not this replica's 100 s"
            ),
            other => panic!("the second request at once: {other:?}"),
        }
    }

    #[test]
    fn a_change_in_live_replicas_grants_no_fresh_burst() {
        // One cell per 100 s: nothing refills during the test, however slowly it runs, so
        // every admission after the burst would be a fresh one.
        let slow = Limits {
            requests_per_second: Some(0.01),
            burst: Some(6),
            ..Limits::default()
        };
        let book = LimitBook::new(Limits {
            burst: Some(4),
            ..slow
        });
        book.set("acme", slow);
        assert_eq!((0..6).filter(|_| book.admit("acme").is_ok()).count(), 6);
        assert_eq!((0..4).filter(|_| book.admit("beta").is_ok()).count(), 4);
        // A replica joins and leaves (as a missed heartbeat makes it look): each change used
        // to rebuild full buckets, a fresh burst for the workspace every time.
        for share in [2, 1, 2, 1] {
            book.set_share(share);
            assert!(book.admit("acme").is_err(), "own limit, share {share}");
            assert!(book.admit("beta").is_err(), "default limit, share {share}");
        }
    }

    #[test]
    fn the_rate_refills_after_a_change_in_live_replicas() {
        let limits = Limits {
            requests_per_second: Some(10.0),
            burst: Some(6),
            ..Limits::default()
        };
        let book = LimitBook::new(Limits {
            burst: Some(4),
            ..limits
        });
        book.set("acme", limits);
        assert_eq!((0..6).filter(|_| book.admit("acme").is_ok()).count(), 6);
        assert_eq!((0..4).filter(|_| book.admit("beta").is_ok()).count(), 4);
        for share in [2, 1, 2, 1] {
            book.set_share(share);
        }
        // 10/s is one every 100 ms: both buckets admit again, soon (a slow machine only
        // makes that later).
        let started = std::time::Instant::now();
        for workspace in ["acme", "beta"] {
            while book.admit(workspace).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "{workspace}: no refill after {:?}",
                    started.elapsed()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    #[test]
    fn defaults_apply_to_workspaces_without_their_own() {
        let book = LimitBook::new(Limits {
            requests_per_second: Some(1.0),
            burst: Some(2),
            ..Limits::default()
        });
        assert_eq!((0..4).filter(|_| book.admit("a").is_ok()).count(), 2);
        assert_eq!(
            (0..4).filter(|_| book.admit("b").is_ok()).count(),
            2,
            "each workspace its own bucket"
        );
    }
}
