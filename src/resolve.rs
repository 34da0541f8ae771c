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
use std::sync::Arc;

use axum::http::HeaderMap;
use siphasher::sip::SipHasher24;

use crate::catalog::{Catalog, RouteSettings, Version};
use crate::measure::aggregate::VersionStats;
use crate::rollout::feed::RolloutTap;
use crate::rollout::policy::Sticky;
use crate::shadow::RolloutShadow;
use crate::types::{Arm, RouteName, now_ms};

/// The bucketing key: fixed forever, so a unit's bucket never changes between releases.
const BUCKET_KEY: (u64, u64) = (0x736c_7569_6365_2d62, 0x7563_6b65_742d_7631);
/// Header that names a conversation for `sticky = "conversation"`.
pub(crate) const CONVERSATION_HEADER: &str = "x-sluice-conversation-id";

/// How a request came to its arm, for the judge and the record.
#[derive(Clone)]
pub(crate) struct Assignment {
    pub(crate) tap: Arc<RolloutTap>,
    /// The canary probability in force.
    pub(crate) w: f64,
    /// False when a pin or a targeted step chose the arm (reported, never judged).
    pub(crate) randomized: bool,
    pub(crate) step: u32,
    pub(crate) shadow: Option<Arc<RolloutShadow>>,
    /// When the arm was chosen (ms since the epoch): the record's `at_ms`, so that the
    /// sample-ratio guard pairs each assignment with its measurement.
    pub(crate) at_ms: i64,
    /// The sticky unit's hash (SipHash-2-4 of salt and key, the number the bucket is cut
    /// from) for randomized requests of a sticky rollout whose request carried the unit;
    /// `None` when the request is its own unit. The judge analyses sticky rollouts per unit.
    pub(crate) unit: Option<u64>,
}

/// Placing a request on a version is resolve's business, so the catalog's one method that
/// yields a [`Target`] lives here, beside the type.
impl Catalog {
    /// `version` serving `route` for `arm`, outside any rollout; `None` for an unknown version.
    pub fn target(&self, route: &RouteName, version: &str, arm: Arm) -> Option<Target> {
        let version = self.version(version)?.clone();
        Some(Target {
            route: route.clone(),
            stats: self.stats_for(route.as_str(), &version.name, arm),
            version,
            arm,
            rollout: None,
            settings: self.route_settings(route.as_str()),
        })
    }
}

/// Where one request goes: the route, the version serving it, and the arm it stands for.
#[derive(Clone)]
pub struct Target {
    pub(crate) route: RouteName,
    pub(crate) version: Arc<Version>,
    pub(crate) arm: Arm,
    pub(crate) stats: Arc<VersionStats>,
    pub(crate) rollout: Option<Assignment>,
    pub(crate) settings: Arc<RouteSettings>,
}

/// What the router may look at to place a request.
pub(crate) struct Unit<'a> {
    pub(crate) workspace: &'a str,
    pub(crate) request_id: &'a str,
    /// The request body's `user` field.
    pub(crate) user: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
}

/// A rollout as the router sees it.
pub(crate) struct LiveRollout {
    pub(crate) salt: u64,
    /// Canary probability for randomized traffic, in [0, 1].
    pub(crate) weight: f64,
    pub(crate) step: u32,
    pub(crate) canary: Target,
    pub(crate) pins: HashMap<String, Arm>,
    /// Workspaces of targeted steps so far: canary at 100 %, not randomized.
    pub(crate) targeted: HashSet<String>,
    pub(crate) sticky: Sticky,
    pub(crate) tap: Arc<RolloutTap>,
    pub(crate) shadow: Option<Arc<RolloutShadow>>,
}

pub(crate) struct RouteEntry {
    pub(crate) stable: Target,
    pub(crate) rollout: Option<LiveRollout>,
}

#[derive(Default)]
pub(crate) struct RoutingTable {
    routes: BTreeMap<String, RouteEntry>,
}

impl RoutingTable {
    /// Every configured route on its stable version: `stables` (routes whose stable a
    /// promotion changed) wins over the config.
    pub(crate) fn new(
        catalog: &Catalog,
        stables: &BTreeMap<String, String>,
    ) -> anyhow::Result<Self> {
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

    pub(crate) fn set_rollout(&mut self, route: &str, rollout: LiveRollout) {
        if let Some(entry) = self.routes.get_mut(route) {
            entry.rollout = Some(rollout);
        }
    }

    /// Why `model` names no route, for the client's 404: the routes there are, and the
    /// route `model` belongs to when it is one of a route's versions (by sluice's name or
    /// the upstream's model name, as an app switching from OpenAI would send).
    pub(crate) fn explain_unknown(&self, model: &str) -> crate::error::UnknownModel {
        let version_of = self.routes.iter().find_map(|(route, entry)| {
            let canary = entry.rollout.as_ref().map(|r| &r.canary);
            std::iter::once(&entry.stable)
                .chain(canary)
                .any(|t| &*t.version.name == model || &*t.version.model == model)
                .then(|| route.clone())
        });
        crate::error::UnknownModel {
            model: model.to_owned(),
            routes: self.routes.keys().cloned().collect(),
            version_of,
        }
    }

    /// The target for a request to `model`, or `None` when no route has that name.
    pub(crate) fn resolve(&self, model: &str, unit: &Unit<'_>) -> Option<Target> {
        let entry = self.routes.get(model)?;
        let Some(rollout) = &entry.rollout else {
            return Some(entry.stable.clone());
        };
        let at_ms = now_ms();
        let (arm, randomized, sticky_unit) = if let Some(arm) = rollout.pins.get(unit.workspace) {
            (*arm, false, None)
        } else if rollout.targeted.contains(unit.workspace) {
            (Arm::Canary, false, None)
        } else {
            let key = sticky_key(&rollout.sticky, unit);
            let hash = unit_hash(rollout.salt, key.as_deref().unwrap_or(unit.request_id));
            let arm = if bucket_of(hash) < rollout.weight {
                Arm::Canary
            } else {
                Arm::Stable
            };
            (arm, true, key.map(|_| hash))
        };
        if randomized {
            rollout.tap.note_assignment(arm, rollout.weight, at_ms);
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
            at_ms,
            unit: sticky_unit,
        });
        Some(target)
    }

    pub(crate) fn route(&self, name: &str) -> Option<&RouteEntry> {
        self.routes.get(name)
    }

    pub(crate) fn route_names(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

/// The sticky unit whose bucket decides the arm; `None` when the request is its own unit
/// (`sticky = "request"`, or the sticky source is absent).
fn sticky_key(sticky: &Sticky, unit: &Unit<'_>) -> Option<String> {
    let header = |name: &str| unit.headers.get(name).and_then(|v| v.to_str().ok());
    match sticky {
        Sticky::Request => None,
        Sticky::User => unit.user.map(|u| format!("{}\u{0}{u}", unit.workspace)),
        Sticky::Header(name) => header(name).map(str::to_owned),
        Sticky::Conversation => header(CONVERSATION_HEADER).map(str::to_owned),
    }
}

/// SipHash-2-4 (fixed key) of (rollout salt, unit key).
pub(crate) fn unit_hash(salt: u64, key: &str) -> u64 {
    let mut h = SipHasher24::new_with_keys(BUCKET_KEY.0, BUCKET_KEY.1);
    h.write_u64(salt);
    h.write(key.as_bytes());
    h.finish()
}

/// A unit hash's position in [0, 1): its top 53 bits, an exactly representable fraction.
fn bucket_of(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The unit's position in [0, 1) for this rollout attempt.
pub fn bucket(salt: u64, key: &str) -> f64 {
    bucket_of(unit_hash(salt, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::feed::TapReceivers;

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
    fn the_sticky_unit_is_the_source_the_policy_names_or_else_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert("x-team", "blue".parse().unwrap());
        headers.insert(CONVERSATION_HEADER, "conv-9".parse().unwrap());
        let unit = Unit {
            workspace: "acme",
            request_id: "req_1",
            user: Some("u7"),
            headers: &headers,
        };
        assert_eq!(sticky_key(&Sticky::Request, &unit), None);
        // A user is only the same user within one workspace.
        assert_eq!(
            sticky_key(&Sticky::User, &unit).as_deref(),
            Some("acme\u{0}u7")
        );
        assert_eq!(
            sticky_key(&Sticky::Header("x-team".into()), &unit).as_deref(),
            Some("blue")
        );
        assert_eq!(
            sticky_key(&Sticky::Conversation, &unit).as_deref(),
            Some("conv-9")
        );
        // Without the source each request stands alone.
        let bare = HeaderMap::new();
        let anonymous = Unit {
            user: None,
            headers: &bare,
            ..unit
        };
        for sticky in [
            Sticky::User,
            Sticky::Header("x-team".into()),
            Sticky::Conversation,
        ] {
            assert_eq!(sticky_key(&sticky, &anonymous), None, "{sticky:?}");
        }
    }

    /// Two versions of one route, `v1` its stable, and the table over them.
    fn table() -> (Catalog, RoutingTable) {
        let rest = r#"
[versions.v1]
provider = "sim"
model = "gpt-4o"
[versions.v2]
provider = "sim"
model = "gpt-4.1"
[routes.chat]
stable = "v1"
"#;
        let settings = crate::settings::for_tests(rest);
        let catalog = Catalog::from_settings(&settings).unwrap();
        let table = RoutingTable::new(&catalog, &BTreeMap::new()).unwrap();
        (catalog, table)
    }

    fn rollout(catalog: &Catalog, weight: f64, sticky: Sticky) -> (LiveRollout, TapReceivers) {
        let (tap, receivers) = RolloutTap::new("ro_1");
        let canary = catalog
            .target(&RouteName::parse("chat").unwrap(), "v2", Arm::Canary)
            .unwrap();
        let live = LiveRollout {
            salt: 7,
            weight,
            step: 2,
            canary,
            pins: HashMap::from([
                ("pinned-stable".to_owned(), Arm::Stable),
                ("pinned-canary".to_owned(), Arm::Canary),
            ]),
            targeted: HashSet::from(["early".to_owned()]),
            sticky,
            tap,
            shadow: None,
        };
        (live, receivers)
    }

    fn unit<'a>(workspace: &'a str, request_id: &'a str, headers: &'a HeaderMap) -> Unit<'a> {
        Unit {
            workspace,
            request_id,
            user: None,
            headers,
        }
    }

    #[test]
    fn a_route_without_a_rollout_is_served_by_its_stable_and_an_unknown_model_by_none() {
        let (_catalog, table) = table();
        let headers = HeaderMap::new();
        assert!(
            table
                .resolve("gpt-4o", &unit("acme", "r1", &headers))
                .is_none()
        );
        let t = table
            .resolve("chat", &unit("acme", "r1", &headers))
            .unwrap();
        assert_eq!((&*t.version.name, t.arm), ("v1", Arm::Stable));
        assert!(t.rollout.is_none(), "no rollout, no assignment");
    }

    #[test]
    fn a_randomized_request_is_canary_exactly_when_its_bucket_is_below_the_weight() {
        let (catalog, mut table) = table();
        let (live, mut receivers) = rollout(&catalog, 0.3, Sticky::Request);
        table.set_rollout("chat", live);
        let headers = HeaderMap::new();
        let n = 2_000;
        let mut canary = 0;
        for i in 0..n {
            let id = format!("req_{i}");
            let t = table.resolve("chat", &unit("acme", &id, &headers)).unwrap();
            let want = if bucket(7, &id) < 0.3 {
                (Arm::Canary, "v2")
            } else {
                (Arm::Stable, "v1")
            };
            assert_eq!((t.arm, &*t.version.name), want, "{id}");
            canary += usize::from(t.arm == Arm::Canary);
            let a = t.rollout.expect("an assignment");
            assert!(a.randomized && a.w == 0.3 && a.step == 2, "{id}");
            assert_eq!(
                a.unit, None,
                "a request that is its own unit carries no unit hash"
            );
            // The sample-ratio guard hears of every randomized assignment, as it was drawn.
            let heard = receivers.assignments.try_recv().unwrap();
            assert_eq!((heard.arm, heard.w, heard.at_ms), (t.arm, 0.3, a.at_ms));
        }
        // Binomial(2 000, 0.3): mean 600, sd 20.5; 5 sd either side.
        assert!(
            (497..=703).contains(&canary),
            "{canary} of {n} on the canary"
        );
    }

    #[test]
    fn a_pin_then_a_targeted_workspace_win_over_the_bucket_and_are_not_randomized() {
        let (catalog, mut table) = table();
        // At 0 % no bucket is below the weight, at 100 % every one: only a pin or a
        // targeted step can give the other arm.
        for (weight, bucket_arm) in [(0.0, Arm::Stable), (1.0, Arm::Canary)] {
            let (live, mut receivers) = rollout(&catalog, weight, Sticky::Request);
            table.set_rollout("chat", live);
            let headers = HeaderMap::new();
            for (workspace, arm, randomized) in [
                ("pinned-stable", Arm::Stable, false),
                ("pinned-canary", Arm::Canary, false),
                ("early", Arm::Canary, false),
                ("acme", bucket_arm, true),
            ] {
                for i in 0..50 {
                    let id = format!("req_{i}");
                    let t = table
                        .resolve("chat", &unit(workspace, &id, &headers))
                        .unwrap();
                    assert_eq!(t.arm, arm, "{workspace} at {weight}");
                    let a = t.rollout.unwrap();
                    assert_eq!(a.randomized, randomized, "{workspace} at {weight}");
                }
            }
            // Only the 50 randomized requests reach the sample-ratio guard.
            let mut heard = 0;
            while receivers.assignments.try_recv().is_ok() {
                heard += 1;
            }
            assert_eq!(heard, 50, "at {weight}");
        }
    }

    #[test]
    fn an_unknown_model_is_explained_by_the_routes_and_the_route_it_is_a_version_of() {
        let (catalog, mut table) = table();
        assert_eq!(table.route_names().collect::<Vec<_>>(), ["chat"]);
        let entry = table.route("chat").expect("the configured route");
        assert_eq!(&*entry.stable.version.name, "v1");
        assert!(entry.rollout.is_none() && table.route("v1").is_none());
        let explain = |table: &RoutingTable, model: &str| table.explain_unknown(model);
        let unknown = |model: &str, version_of: Option<&str>| crate::error::UnknownModel {
            model: model.into(),
            routes: vec!["chat".into()],
            version_of: version_of.map(Into::into),
        };
        // A version by sluice's name or by its upstream model's, stable or (during a
        // rollout) canary; anything else is no route's.
        assert_eq!(explain(&table, "v1"), unknown("v1", Some("chat")));
        assert_eq!(explain(&table, "gpt-4o"), unknown("gpt-4o", Some("chat")));
        assert_eq!(explain(&table, "gpt-4.1"), unknown("gpt-4.1", None));
        let (live, _receivers) = rollout(&catalog, 0.1, Sticky::Request);
        table.set_rollout("chat", live);
        assert!(table.route("chat").unwrap().rollout.is_some());
        assert_eq!(explain(&table, "v2"), unknown("v2", Some("chat")));
        assert_eq!(explain(&table, "gpt-4.1"), unknown("gpt-4.1", Some("chat")));
        assert_eq!(explain(&table, "claude"), unknown("claude", None));
    }

    #[test]
    fn a_sticky_unit_keeps_its_arm_and_its_hash_whatever_the_request() {
        let (catalog, mut table) = table();
        let (live, _receivers) = rollout(&catalog, 0.5, Sticky::User);
        table.set_rollout("chat", live);
        let headers = HeaderMap::new();
        let (mut seen_canary, mut seen_stable) = (false, false);
        for u in 0..40 {
            let user = format!("user-{u}");
            let key = format!("acme\u{0}{user}");
            let want = if bucket(7, &key) < 0.5 {
                Arm::Canary
            } else {
                Arm::Stable
            };
            for r in 0..5 {
                let id = format!("req_{u}_{r}");
                let t = table
                    .resolve(
                        "chat",
                        &Unit {
                            user: Some(&user),
                            ..unit("acme", &id, &headers)
                        },
                    )
                    .unwrap();
                assert_eq!(t.arm, want, "{user}");
                assert_eq!(t.rollout.unwrap().unit, Some(unit_hash(7, &key)), "{user}");
            }
            seen_canary |= want == Arm::Canary;
            seen_stable |= want == Arm::Stable;
        }
        assert!(
            seen_canary && seen_stable,
            "40 users at 50 % fell on one arm"
        );
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
