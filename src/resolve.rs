//! Resolve: the `model` a client asked for is a route; the routing table says which version
//! (and arm) serves the request.
//!
//! Order: a workspace pin, then a targeted step's workspaces, then the sticky bucket —
//! SipHash-2-4 (fixed key) of (rollout salt, sticky unit) mapped to [0, 1) — below the
//! canary weight. Weights only rise inside a rollout, so a unit in the canary at 5 % is
//! still in it at 25 %. The table is immutable and swapped whole (`ArcSwap`): the request
//! path reads it without a lock and never waits for the judge or the database.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use serde::Serialize;
use siphasher::sip::SipHasher24;

use crate::config::{MockConfig, OnSchemaFailure, Price, ProviderKind, Settings};
use crate::guardrails::GuardrailSet;
use crate::measure::aggregate::VersionStats;
use crate::measure::tokens::Encoding;
use crate::rollout::feed::RolloutTap;
use crate::rollout::policy::Sticky;
use crate::shadow::RolloutShadow;
use crate::upstream::Provider;
use crate::upstream::http::HttpProvider;
use crate::upstream::mock::MockProvider;

/// The bucketing key: fixed forever, so a unit's bucket never changes between releases.
const BUCKET_KEY: (u64, u64) = (0x736c_7569_6365_2d62, 0x7563_6b65_742d_7631);
/// Header that names a conversation for `sticky = "conversation"`.
pub const CONVERSATION_HEADER: &str = "x-sluice-conversation-id";

/// A route name: what clients put in `model`. Letters, digits and `-._:/`, 1 to 128 long.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._:/".contains(c));
        if ok {
            Ok(Self(name.into()))
        } else {
            Err(format!(
                "`{name}` is not a route name: use 1–128 letters, digits or -._:/"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which side of a rollout served a request.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    Stable,
    Canary,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
        }
    }

    pub fn parse(s: &str) -> Option<Arm> {
        match s {
            "stable" => Some(Arm::Stable),
            "canary" => Some(Arm::Canary),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        match self {
            Arm::Stable => 0,
            Arm::Canary => 1,
        }
    }
}

/// A concrete model on a provider, ready to be called.
pub struct Version {
    pub name: Arc<str>,
    pub model: Arc<str>,
    pub price: Price,
    pub encoding: Encoding,
    /// A mock version's answer shape; swappable at run time (the demo injects regressions).
    pub mock: Option<arc_swap::ArcSwap<MockConfig>>,
    pub provider: Arc<Provider>,
    /// Set when the provider needs an API key whose variable is unset: such a version
    /// cannot serve, so a rollout to it is refused.
    pub missing_key: Option<String>,
    /// The model the upstream last said answered, and how often that changed.
    pub served: Mutex<Option<String>>,
    pub served_changes: std::sync::atomic::AtomicU64,
}

impl Version {
    /// Notes the `model` an answer names. A provider alias that moved to a new snapshot
    /// shows here: counted, and logged once per change.
    pub fn note_served_model(&self, model: &str) {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        match served.as_deref() {
            Some(last) if last == model => {}
            Some(last) => {
                tracing::warn!(version = %self.name, from = %last, to = %model, "the upstream now answers with another model");
                self.served_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *served = Some(model.to_owned());
            }
            None => *served = Some(model.to_owned()),
        }
    }
}

/// What a route adds to every request on it: its guardrails and its schema rule.
#[derive(Default)]
pub struct RouteSettings {
    pub guardrails: Option<Arc<GuardrailSet>>,
    pub on_schema_failure: OnSchemaFailure,
}

/// How a request came to its arm, for the judge and the record.
#[derive(Clone)]
pub struct Assignment {
    pub tap: Arc<RolloutTap>,
    /// The canary probability in force.
    pub w: f64,
    /// False when a pin or a targeted step chose the arm (reported, never judged).
    pub randomized: bool,
    pub step: u32,
    pub shadow: Option<Arc<RolloutShadow>>,
}

/// Where one request goes: the route, the version serving it, and the arm it stands for.
#[derive(Clone)]
pub struct Target {
    pub route: RouteName,
    pub version: Arc<Version>,
    pub arm: Arm,
    pub stats: Arc<VersionStats>,
    pub rollout: Option<Assignment>,
    pub settings: Arc<RouteSettings>,
}

/// What the router may look at to place a request.
pub struct Unit<'a> {
    pub workspace: &'a str,
    pub request_id: &'a str,
    /// The request body's `user` field.
    pub user: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A rollout as the router sees it.
pub struct LiveRollout {
    pub salt: u64,
    /// Canary probability for randomized traffic, in [0, 1].
    pub weight: f64,
    pub step: u32,
    pub canary: Target,
    pub pins: HashMap<String, Arm>,
    /// Workspaces of targeted steps so far: canary at 100 %, not randomized.
    pub targeted: HashSet<String>,
    pub sticky: Sticky,
    pub tap: Arc<RolloutTap>,
    pub shadow: Option<Arc<RolloutShadow>>,
}

pub struct RouteEntry {
    pub stable: Target,
    pub rollout: Option<LiveRollout>,
}

/// The versions and per-(route, version) stats, built once: routing tables come and go,
/// these stay, so a version's live figures survive every table swap.
pub struct Catalog {
    versions: BTreeMap<String, Arc<Version>>,
    /// Every provider by name (the `[passthrough]` provider is looked up here).
    providers: BTreeMap<String, Arc<Provider>>,
    /// Route → its stable version as configured.
    configured: BTreeMap<String, String>,
    settings: BTreeMap<String, Arc<RouteSettings>>,
    stats: Mutex<BTreeMap<(String, String, Arm), Arc<VersionStats>>>,
}

impl Catalog {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let config = &settings.config;
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            let timeout = Duration::from_millis(p.timeout_ms);
            let provider = match p.kind {
                ProviderKind::Openai | ProviderKind::Azure => {
                    Provider::Http(Box::new(HttpProvider::from_config(
                        p,
                        settings.provider_keys.get(name).cloned(),
                        settings.file.parent().unwrap_or(std::path::Path::new("")),
                    )?))
                }
                ProviderKind::Mock => Provider::Mock(MockProvider { timeout }),
            };
            providers.insert(name.clone(), Arc::new(provider));
        }
        let mut versions = BTreeMap::new();
        for (name, v) in &config.versions {
            let provider = &config.providers[&v.provider];
            let var = provider
                .bearer_token_env
                .as_ref()
                .or(provider.api_key_env.as_ref());
            let missing_key = match (var, provider.kind) {
                (Some(var), ProviderKind::Openai | ProviderKind::Azure)
                    if !settings.provider_keys.contains_key(&v.provider) =>
                {
                    Some(var.clone())
                }
                _ => None,
            };
            // On Azure the deployment is what the URL and the body's `model` name.
            let upstream_model = v.deployment.as_deref().unwrap_or(&v.model);
            let version = Version {
                name: name.as_str().into(),
                model: upstream_model.into(),
                price: v.price,
                encoding: Encoding::for_model(&v.model),
                mock: v
                    .mock
                    .clone()
                    .or_else(|| (provider.kind == ProviderKind::Mock).then(MockConfig::default))
                    .map(arc_swap::ArcSwap::from_pointee),
                provider: providers[&v.provider].clone(),
                missing_key,
                served: Mutex::new(None),
                served_changes: Default::default(),
            };
            versions.insert(name.clone(), Arc::new(version));
        }
        let configured = config
            .routes
            .iter()
            .map(|(route, r)| (route.clone(), r.stable.clone()))
            .collect();
        let settings = config
            .routes
            .iter()
            .map(|(route, r)| {
                let s = RouteSettings {
                    guardrails: r
                        .guardrails
                        .as_ref()
                        .and_then(|g| settings.guardrails.get(g).cloned()),
                    on_schema_failure: r.on_schema_failure,
                };
                (route.clone(), Arc::new(s))
            })
            .collect();
        Ok(Self {
            versions,
            providers,
            configured,
            settings,
            stats: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn version(&self, name: &str) -> Option<&Arc<Version>> {
        self.versions.get(name)
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    pub fn versions(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.versions.values()
    }

    /// The configured routes and their configured stable versions.
    pub fn routes(&self) -> &BTreeMap<String, String> {
        &self.configured
    }

    /// The live stats of `version` serving `route` as `arm` (created on first use).
    pub fn stats_for(&self, route: &str, version: &str, arm: Arm) -> Arc<VersionStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .entry((route.to_owned(), version.to_owned(), arm))
            .or_default()
            .clone()
    }

    /// Every (route, version, arm) served since start, with its stats.
    pub fn all_stats(&self) -> Vec<(String, String, Arm, Arc<VersionStats>)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .iter()
            .map(|((r, v, a), s)| (r.clone(), v.clone(), *a, s.clone()))
            .collect()
    }

    /// Every version that has served `route` since start, with its stats per arm.
    pub fn route_stats(&self, route: &str) -> Vec<(String, Arm, Arc<VersionStats>)> {
        self.all_stats()
            .into_iter()
            .filter(|(r, ..)| r == route)
            .map(|(_, v, a, s)| (v, a, s))
            .collect()
    }

    pub fn target(&self, route: &RouteName, version: &str, arm: Arm) -> Option<Target> {
        let version = self.versions.get(version)?.clone();
        Some(Target {
            route: route.clone(),
            stats: self.stats_for(route.as_str(), &version.name, arm),
            version,
            arm,
            rollout: None,
            settings: self
                .settings
                .get(route.as_str())
                .cloned()
                .unwrap_or_default(),
        })
    }
}

#[derive(Default)]
pub struct RoutingTable {
    routes: BTreeMap<String, RouteEntry>,
}

impl RoutingTable {
    /// Every configured route on its stable version: `stables` (routes whose stable a
    /// promotion changed) wins over the config.
    pub fn new(catalog: &Catalog, stables: &BTreeMap<String, String>) -> anyhow::Result<Self> {
        let mut routes = BTreeMap::new();
        for (name, configured) in catalog.routes() {
            let route = RouteName::parse(name).map_err(anyhow::Error::msg)?;
            let version = stables.get(name).unwrap_or(configured);
            let stable = catalog
                .target(&route, version, Arm::Stable)
                .ok_or_else(|| anyhow::anyhow!("route `{name}`: unknown version `{version}`"))?;
            routes.insert(
                name.clone(),
                RouteEntry {
                    stable,
                    rollout: None,
                },
            );
        }
        Ok(Self { routes })
    }

    pub fn set_rollout(&mut self, route: &str, rollout: LiveRollout) {
        if let Some(entry) = self.routes.get_mut(route) {
            entry.rollout = Some(rollout);
        }
    }

    /// The target for a request to `model`, or `None` when no route has that name.
    pub fn resolve(&self, model: &str, unit: &Unit<'_>) -> Option<Target> {
        let entry = self.routes.get(model)?;
        let Some(rollout) = &entry.rollout else {
            return Some(entry.stable.clone());
        };
        let (arm, randomized) = if let Some(arm) = rollout.pins.get(unit.workspace) {
            (*arm, false)
        } else if rollout.targeted.contains(unit.workspace) {
            (Arm::Canary, false)
        } else {
            let key = sticky_key(&rollout.sticky, unit);
            let arm = if bucket(rollout.salt, &key) < rollout.weight {
                Arm::Canary
            } else {
                Arm::Stable
            };
            (arm, true)
        };
        if randomized {
            rollout.tap.note_assigned(arm);
        }
        let mut target = match arm {
            Arm::Canary => rollout.canary.clone(),
            Arm::Stable => entry.stable.clone(),
        };
        target.rollout = Some(Assignment {
            tap: rollout.tap.clone(),
            w: rollout.weight,
            randomized,
            step: rollout.step,
            shadow: rollout.shadow.clone(),
        });
        Some(target)
    }

    pub fn route(&self, name: &str) -> Option<&RouteEntry> {
        self.routes.get(name)
    }

    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

/// The unit whose bucket decides the arm; the request itself when the sticky source is absent.
fn sticky_key(sticky: &Sticky, unit: &Unit<'_>) -> String {
    let header = |name: &str| unit.headers.get(name).and_then(|v| v.to_str().ok());
    let from = match sticky {
        Sticky::Request => None,
        Sticky::User => unit.user.map(|u| format!("{}\u{0}{u}", unit.workspace)),
        Sticky::Header(name) => header(name).map(str::to_owned),
        Sticky::Conversation => header(CONVERSATION_HEADER).map(str::to_owned),
    };
    from.unwrap_or_else(|| unit.request_id.to_owned())
}

/// The unit's position in [0, 1) for this rollout attempt.
pub fn bucket(salt: u64, key: &str) -> f64 {
    let mut h = SipHasher24::new_with_keys(BUCKET_KEY.0, BUCKET_KEY.1);
    h.write_u64(salt);
    h.write(key.as_bytes());
    // The top 53 bits make an exactly representable fraction.
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_checked() {
        assert!(RouteName::parse("chat").is_ok());
        assert!(RouteName::parse("gpt-4o:mini/eu").is_ok());
        assert!(RouteName::parse("").is_err());
        assert!(RouteName::parse("has space").is_err());
    }

    #[test]
    fn buckets_are_stable_and_uniform() {
        // Fixed forever: a change here moves users between arms of running rollouts.
        assert_eq!(bucket(7, "user-1"), bucket(7, "user-1"));
        assert_ne!(bucket(7, "user-1"), bucket(8, "user-1"));
        let n = 100_000;
        let below = (0..n)
            .filter(|i| bucket(42, &format!("req-{i}")) < 0.05)
            .count();
        // Binomial(100 000, 0.05): sd ≈ 69; 5 sd either side.
        assert!((4_655..=5_345).contains(&below), "{below}");
    }

    #[test]
    fn a_unit_in_the_canary_stays_there_when_the_weight_rises() {
        for i in 0..10_000 {
            let u = bucket(99, &format!("user-{i}"));
            for (low, high) in [(0.01, 0.05), (0.05, 0.25), (0.25, 0.5)] {
                if u < low {
                    assert!(
                        u < high,
                        "unit {i} left the canary going from {low} to {high}"
                    );
                }
            }
        }
    }
}
