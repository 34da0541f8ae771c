-- Rollouts: where each stands, its workspace pins, its audit log, and promoted stables.
ALTER TABLE requests ADD COLUMN rollout_id TEXT;
ALTER TABLE requests ADD COLUMN canary_weight DOUBLE PRECISION;  -- w when the request was assigned
ALTER TABLE requests ADD COLUMN randomized INTEGER NOT NULL DEFAULT 1;  -- 0 when pinned/targeted
ALTER TABLE requests ADD COLUMN step INTEGER;

CREATE TABLE rollouts (
    id                 TEXT PRIMARY KEY,
    route              TEXT NOT NULL,
    stable_version     TEXT NOT NULL,
    canary_version     TEXT NOT NULL,
    policy             TEXT NOT NULL,
    policy_json        TEXT NOT NULL,
    salt               TEXT NOT NULL,
    state              TEXT NOT NULL,
    step               INTEGER NOT NULL,
    weight_bp          INTEGER NOT NULL,
    inconclusive       INTEGER NOT NULL,
    step_started_at_ms BIGINT NOT NULL,
    started_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    ended_at_ms        BIGINT,
    judge_state        TEXT,
    last_report        TEXT
);
-- At most one live rollout per route, whatever replica asks.
CREATE UNIQUE INDEX rollouts_one_live_per_route ON rollouts(route) WHERE state IN ('progressing', 'paused');

CREATE TABLE rollout_pins (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    workspace  TEXT NOT NULL,
    arm        TEXT NOT NULL,
    PRIMARY KEY (rollout_id, workspace)
);

CREATE TABLE rollout_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    at_ms      BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    step       INTEGER NOT NULL,
    weight_bp  INTEGER NOT NULL,
    message    TEXT NOT NULL,
    evidence   TEXT
);
CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, id);

CREATE TABLE route_stable (
    route         TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    rollout_id    TEXT,
    updated_at_ms BIGINT NOT NULL
);
