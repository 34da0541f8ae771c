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

/// What handlers and the pipeline reach: the settings, the store, the catalog, the routing
/// table, the counters and the background tasks of one running server.
pub struct App {
    pub(crate) settings: Settings,
    pub(crate) store: Store,
    pub(crate) keys: KeyCache,
    /// Failed authentications and admin calls, limited per client address.
    pub(crate) throttle: crate::throttle::ClientThrottle,
    pub(crate) catalog: Arc<Catalog>,
    /// Read by every request without a lock; replaced whole by the rollout controller.
    pub(crate) routing: Arc<ArcSwap<RoutingTable>>,
    /// Where every finished request's record goes.
    pub sink: Arc<RecordSink>,
    pub(crate) rollouts: Arc<Controller>,
    /// Compiled response schemas, shared by every request.
    pub(crate) schemas: Arc<SchemaChecker>,
    /// Guardrail counts since start, for `/metrics`.
    pub guardrail_counts: Arc<GuardrailCounters>,
    /// Finished primaries whose shadow copy is still to be sent.
    pub(crate) shadows: Arc<crate::shadow::ShadowQueue>,
    pub(crate) limits: Arc<crate::limits::LimitBook>,
    pub(crate) traces: crate::traces::Traces,
    /// The background tasks; `/healthz` fails once one of them has died.
    pub tasks: crate::tasks::Tasks,
    /// This replica's place among several (a single process on SQLite).
    pub(crate) cluster: Arc<crate::cluster::Cluster>,
    /// Which version produced each Response id: conversations continue where they began.
    pub(crate) response_book: Arc<crate::responses::book::ResponseBook>,
}

/// The shared [`App`] every handler gets.
pub type AppState = Arc<App>;
