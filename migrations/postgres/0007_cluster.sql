-- Several replicas on one database: who is alive, who leads what (with a fencing token),
-- the observations every replica ships to the judging one, and a revision per rollout so
-- that a write made from a stale view is refused instead of undoing a newer one.
CREATE TABLE cluster_replicas (
    id              TEXT PRIMARY KEY,
    address         TEXT NOT NULL,
    version         TEXT NOT NULL,
    started_at_ms   BIGINT NOT NULL,
    heartbeat_at_ms BIGINT NOT NULL
);

-- A lease: `holder` may act for `name` until `expires_at_ms` (the database's clock). The
-- fence grows by one each time the holder changes; writes made under a lease carry it, and
-- a write whose fence is not the current one is refused.
CREATE TABLE cluster_leases (
    name          TEXT PRIMARY KEY,
    holder        TEXT NOT NULL,
    fence         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);

-- One row per (rollout, replica, flush): that replica's observations of the rollout since
-- its previous flush. `seq` grows per replica, so (replica, seq) is a cursor that the judge
-- stores with its checkpoint: each observation is judged exactly once, even across takeovers.
CREATE TABLE cluster_observations (
    rollout_id       TEXT NOT NULL,
    replica          TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    at_ms            BIGINT NOT NULL,
    observations     TEXT NOT NULL,
    assigned_stable  BIGINT NOT NULL,
    assigned_canary  BIGINT NOT NULL,
    stable_requests  BIGINT NOT NULL,
    canary_requests  BIGINT NOT NULL,
    stable_errors    BIGINT NOT NULL,
    canary_errors    BIGINT NOT NULL,
    stable_latency_ms DOUBLE PRECISION NOT NULL,
    canary_latency_ms DOUBLE PRECISION NOT NULL,
    dropped          BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, replica, seq)
);
CREATE INDEX cluster_observations_at ON cluster_observations(at_ms);

ALTER TABLE rollouts ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
-- JSON: the judge's cursor into cluster_observations and its per-step counters.
ALTER TABLE rollouts ADD COLUMN judge_cursor TEXT;

CREATE INDEX requests_at ON requests(at_ms);
CREATE INDEX rollout_events_at ON rollout_events(at_ms);
CREATE INDEX shadow_pairs_at ON shadow_pairs(at_ms);
CREATE INDEX feedback_at ON feedback(at_ms);
