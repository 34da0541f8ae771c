//! Resolve: the `model` a client asked for is a route; the route's routing-table entry says
//! which version (and arm) serves the request.
//!
//! The table is immutable and swapped whole (`ArcSwap`), so the request path reads it
//! without a lock and a change is one atomic store. Each entry carries the `Arc` of its
//! version's live stats, so measuring a request touches no map either.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{MockConfig, Price, ProviderKind, Settings};
use crate::measure::aggregate::VersionStats;
use crate::measure::tokens::Encoding;
use crate::upstream::Provider;
use crate::upstream::http::HttpProvider;
use crate::upstream::mock::MockProvider;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
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
}

/// A concrete model on a provider, ready to be called.
pub struct Version {
    pub name: Arc<str>,
    pub model: Arc<str>,
    pub price: Price,
    pub encoding: Encoding,
    pub mock: Option<MockConfig>,
    pub provider: Arc<Provider>,
}

/// Where one request goes: the route, the version serving it, and the arm it stands for.
#[derive(Clone)]
pub struct Target {
    pub route: RouteName,
    pub version: Arc<Version>,
    pub arm: Arm,
    pub stats: Arc<VersionStats>,
}

pub struct RouteEntry {
    pub stable: Target,
    /// Live stats of every version this route has served since start, by version name.
    pub stats: BTreeMap<Arc<str>, Arc<VersionStats>>,
}

#[derive(Default)]
pub struct RoutingTable {
    routes: BTreeMap<String, RouteEntry>,
}

impl RoutingTable {
    /// Builds the table from a checked config: one provider client per provider, one
    /// version per version, one entry per route.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let config = &settings.config;
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            let timeout = Duration::from_millis(p.timeout_ms);
            let provider = match p.kind {
                ProviderKind::Openai => Provider::Http(HttpProvider::new(
                    p.base_url.as_deref().unwrap_or_default(),
                    settings.provider_keys.get(name).cloned(),
                    timeout,
                )?),
                ProviderKind::Mock => Provider::Mock(MockProvider { timeout }),
            };
            providers.insert(name.clone(), Arc::new(provider));
        }
        let mut versions = BTreeMap::new();
        for (name, v) in &config.versions {
            let version = Version {
                name: name.as_str().into(),
                model: v.model.as_str().into(),
                price: v.price,
                encoding: Encoding::for_model(&v.model),
                mock: v.mock.clone(),
                provider: providers[&v.provider].clone(),
            };
            versions.insert(name.clone(), Arc::new(version));
        }
        let mut routes = BTreeMap::new();
        for (name, r) in &config.routes {
            let route = RouteName::parse(name).map_err(anyhow::Error::msg)?;
            let version = versions[&r.stable].clone();
            let stats = Arc::new(VersionStats::default());
            let entry = RouteEntry {
                stable: Target {
                    route,
                    version: version.clone(),
                    arm: Arm::Stable,
                    stats: stats.clone(),
                },
                stats: BTreeMap::from([(version.name.clone(), stats)]),
            };
            routes.insert(name.clone(), entry);
        }
        Ok(Self { routes })
    }

    /// The target for a request to `model`, or `None` when no route has that name.
    pub fn resolve(&self, model: &str) -> Option<&Target> {
        self.routes.get(model).map(|entry| &entry.stable)
    }

    pub fn route(&self, name: &str) -> Option<&RouteEntry> {
        self.routes.get(name)
    }

    pub fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
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
}
