//! The state every handler shares: settings, store, key cache, catalog, routing table,
//! record sink, and the rollout controller.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::KeyCache;
use crate::catalog::Catalog;
use crate::guardrails::GuardrailCounters;
use crate::measure::schema::SchemaChecker;
use crate::measure::sink::RecordSink;
use crate::resolve::RoutingTable;
use crate::rollout::control::Controller;
use crate::settings::Settings;
use crate::store::Store;

pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub keys: KeyCache,
    /// Failed authentications and admin calls, limited per client address.
    pub throttle: crate::throttle::ClientThrottle,
    pub catalog: Arc<Catalog>,
    /// Read by every request without a lock; replaced whole by the rollout controller.
    pub routing: Arc<ArcSwap<RoutingTable>>,
    pub sink: Arc<RecordSink>,
    pub rollouts: Arc<Controller>,
    /// Compiled response schemas, shared by every request.
    pub schemas: Arc<SchemaChecker>,
    pub guardrail_counts: Arc<GuardrailCounters>,
    /// Finished primaries whose shadow copy is still to be sent.
    pub shadows: Arc<crate::shadow::ShadowQueue>,
    pub limits: Arc<crate::limits::LimitBook>,
    pub traces: crate::traces::Traces,
    /// The background tasks; `/healthz` fails once one of them has died.
    pub tasks: crate::tasks::Tasks,
    /// This replica's place among several (a single process on SQLite).
    pub cluster: Arc<crate::cluster::Cluster>,
    /// Which version produced each Response id: conversations continue where they began.
    pub response_book: Arc<crate::responses::book::ResponseBook>,
}

pub type AppState = Arc<App>;
