//! Catalog: what exists to route to. The configured versions (each a model on a provider,
//! with its client built by `upstream::Provider::from_config`), each route's settings, and
//! the live stats per (route, version, arm).
//!
//! Built once at start from the [`Settings`]; routing tables (`resolve`) come and go over
//! it, so a version's live figures survive every table swap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::{MockConfig, OnSchemaFailure, ProviderKind};
use crate::guardrails::GuardrailSet;
use crate::measure::aggregate::VersionStats;
use crate::measure::tokens::Encoding;
use crate::settings::Settings;
use crate::types::{Arm, Price};
use crate::upstream::Provider;

/// A concrete model on a provider, ready to be called.
pub(crate) struct Version {
    pub(crate) name: Arc<str>,
    pub(crate) model: Arc<str>,
    pub(crate) price: Price,
    pub(crate) encoding: Encoding,
    /// A mock version's answer shape; swappable at run time (the demo injects regressions).
    pub(crate) mock: Option<arc_swap::ArcSwap<MockConfig>>,
    pub(crate) provider: Arc<Provider>,
    /// Set when the provider needs an API key whose variable is unset: such a version
    /// cannot serve, so a rollout to it is refused.
    pub(crate) missing_key: Option<String>,
    /// The model the upstream last said answered, and how often that changed.
    pub(crate) served: Mutex<Option<String>>,
    pub(crate) served_changes: std::sync::atomic::AtomicU64,
}

impl Version {
    /// Notes the `model` an answer names. A provider alias that moved to a new snapshot
    /// shows here: counted, and logged once per change.
    pub(crate) fn note_served_model(&self, model: &str) {
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
pub(crate) struct RouteSettings {
    pub(crate) guardrails: Option<Arc<GuardrailSet>>,
    pub(crate) on_schema_failure: OnSchemaFailure,
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
    /// No versions, providers or routes (unit tests of what only reads the catalog).
    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        Catalog {
            versions: BTreeMap::new(),
            providers: BTreeMap::new(),
            configured: BTreeMap::new(),
            settings: BTreeMap::new(),
            stats: Mutex::new(BTreeMap::new()),
        }
    }

    /// The catalog `settings` configure: a client per provider, each version with its price.
    ///
    /// # Errors
    /// When a provider's HTTP client cannot be built (e.g. a malformed URL or header).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let config = &settings.config;
        let mut providers = BTreeMap::new();
        for (name, p) in &config.providers {
            let provider = Provider::from_config(
                p,
                settings.provider_keys.get(name).cloned(),
                settings.file.parent().unwrap_or(std::path::Path::new("")),
            )?;
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

    pub(crate) fn version(&self, name: &str) -> Option<&Arc<Version>> {
        self.versions.get(name)
    }

    pub(crate) fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    pub(crate) fn versions(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.versions.values()
    }

    /// The configured routes and their configured stable versions.
    pub(crate) fn routes(&self) -> &BTreeMap<String, String> {
        &self.configured
    }

    /// The live stats of `version` serving `route` as `arm` (created on first use).
    pub(crate) fn stats_for(&self, route: &str, version: &str, arm: Arm) -> Arc<VersionStats> {
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .entry((route.to_owned(), version.to_owned(), arm))
            .or_default()
            .clone()
    }

    /// Every (route, version, arm) served since start, with its stats.
    pub(crate) fn all_stats(&self) -> Vec<(String, String, Arm, Arc<VersionStats>)> {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .iter()
            .map(|((r, v, a), s)| (r.clone(), v.clone(), *a, s.clone()))
            .collect()
    }

    /// Every version that has served `route` since start, with its stats per arm.
    pub(crate) fn route_stats(&self, route: &str) -> Vec<(String, Arm, Arc<VersionStats>)> {
        self.all_stats()
            .into_iter()
            .filter(|(r, ..)| r == route)
            .map(|(_, v, a, s)| (v, a, s))
            .collect()
    }

    /// What `route` adds to every request on it (nothing for an unknown route).
    pub(crate) fn route_settings(&self, route: &str) -> Arc<RouteSettings> {
        self.settings.get(route).cloned().unwrap_or_default()
    }
}
