//! Limits per client address, in front of everything a credential guards: failed
//! authentications (so that keys and the admin token cannot be guessed at line rate) and
//! admin calls.
//!
//! Failures are counted with governor's GCRA (a burst of `auth_failure_burst`, refilled at
//! `auth_failures_per_minute`). Once an address has spent its burst it is locked until the
//! limiter would admit it again, and a locked address is answered 429 *before* its
//! credential is looked at: a guess made while locked learns nothing, right or wrong.
//! Successful authentications cost nothing. Governor is used directly rather than through
//! tower_governor because the limit applies to failures only, which a layer in front of
//! the router cannot tell apart.
//!
//! The address is the TCP peer's: behind a load balancer that is the balancer's, so set the
//! limits with the balancer's own in mind (sluice does not trust `X-Forwarded-For`).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::ServerConfig;

/// Above this many tracked addresses, forget the ones whose buckets are full again.
const RETAIN_ABOVE: usize = 10_000;

pub(crate) struct ClientThrottle {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    admin: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses that spent their failure burst, until when.
    locked: moka::sync::Cache<IpAddr, Instant>,
    refused_auth: AtomicU64,
    refused_admin: AtomicU64,
}

/// How many requests each limit has answered 429 since start (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusals {
    pub(crate) auth_failures: u64,
    pub(crate) admin: u64,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_minute.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Quota::per_minute(rate).allow_burst(burst)
}

impl ClientThrottle {
    pub(crate) fn new(server: &ServerConfig) -> Self {
        Self {
            failures: RateLimiter::keyed(quota(
                server.auth_failures_per_minute,
                server.auth_failure_burst,
            )),
            admin: RateLimiter::keyed(quota(
                server.admin_requests_per_second.saturating_mul(60),
                server.admin_burst,
            )),
            locked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            refused_auth: AtomicU64::new(0),
            refused_admin: AtomicU64::new(0),
        }
    }

    /// How long `ip` must still wait when it is locked out for failing too often; `None`
    /// when it may try.
    pub(crate) fn locked(&self, ip: IpAddr) -> Option<Duration> {
        let until = self.locked.get(&ip)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            self.locked.invalidate(&ip);
            return None;
        }
        self.refused_auth.fetch_add(1, Ordering::Relaxed);
        Some(left)
    }

    /// Counts a failed authentication from `ip`. Returns how long it is now locked out
    /// when this failure was one over its burst; `None` when it may simply be told 401.
    pub(crate) fn note_failure(&self, ip: IpAddr) -> Option<Duration> {
        if self.failures.len() > RETAIN_ABOVE {
            self.failures.retain_recent();
        }
        match self.failures.check_key(&ip) {
            Ok(()) => None,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.locked.insert(ip, Instant::now() + wait);
                self.refused_auth.fetch_add(1, Ordering::Relaxed);
                Some(wait)
            }
        }
    }

    /// Admits one admin call from `ip`, or says how long to wait.
    pub(crate) fn admit_admin(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.admin.len() > RETAIN_ABOVE {
            self.admin.retain_recent();
        }
        self.admin.check_key(&ip).map_err(|not_until| {
            self.refused_admin.fetch_add(1, Ordering::Relaxed);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    pub(crate) fn refusals(&self) -> Refusals {
        Refusals {
            auth_failures: self.refused_auth.load(Ordering::Relaxed),
            admin: self.refused_admin.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32) -> ClientThrottle {
        let server = ServerConfig {
            auth_failure_burst: burst,
            auth_failures_per_minute: 1,
            admin_burst: 2,
            admin_requests_per_second: 1,
            ..ServerConfig::default()
        };
        ClientThrottle::new(&server)
    }

    #[test]
    fn a_burst_of_failures_then_a_lockout_per_address() {
        let t = throttle(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert_eq!(t.note_failure(a), None);
        }
        let wait = t.note_failure(a).expect("the fourth failure locks");
        // One failure a minute refills the bucket: about a minute to wait.
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(t.locked(a).is_some());
        // Another address is untouched.
        assert_eq!(t.locked(b), None);
        assert_eq!(t.note_failure(b), None);
        assert_eq!(t.refusals().auth_failures, 2);
    }

    #[test]
    fn admin_calls_have_a_burst_per_address() {
        let t = throttle(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(t.admit_admin(a).is_ok());
        assert!(t.admit_admin(a).is_ok());
        assert!(t.admit_admin(a).is_err());
        assert!(t.admit_admin("10.0.0.9".parse().unwrap()).is_ok());
        assert_eq!(t.refusals().admin, 1);
    }
}
