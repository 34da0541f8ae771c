//! The state every handler shares: settings, store, key cache, routing table, record sink.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::KeyCache;
use crate::config::Settings;
use crate::measure::sink::RecordSink;
use crate::resolve::RoutingTable;
use crate::store::Store;

pub struct App {
    pub settings: Settings,
    pub store: Store,
    pub keys: KeyCache,
    /// Read by every request without a lock; replaced whole when routing changes.
    pub routing: ArcSwap<RoutingTable>,
    pub sink: Arc<RecordSink>,
}

pub type AppState = Arc<App>;
