-- Shadow pairs (a request, the answer its user got, and the other version's answer) and
-- feedback on requests (business metrics).
CREATE TABLE shadow_pairs (
    id              BIGSERIAL PRIMARY KEY,
    rollout_id      TEXT NOT NULL,
    at_ms           BIGINT NOT NULL,
    request_id      TEXT NOT NULL,
    trace_id        TEXT,
    workspace_id    TEXT NOT NULL,
    request         TEXT NOT NULL,
    primary_version TEXT NOT NULL,
    primary_arm     TEXT NOT NULL,
    primary_answer  TEXT NOT NULL,
    primary_record  TEXT NOT NULL,
    shadow_version  TEXT NOT NULL,
    shadow_answer   TEXT NOT NULL,
    shadow_record   TEXT NOT NULL
);
CREATE INDEX shadow_pairs_rollout ON shadow_pairs(rollout_id, id);

CREATE TABLE feedback (
    id           BIGSERIAL PRIMARY KEY,
    request_id   TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    metric       TEXT NOT NULL,
    value        DOUBLE PRECISION NOT NULL,
    at_ms        BIGINT NOT NULL,
    rollout_id   TEXT,
    arm          TEXT
);
CREATE INDEX feedback_request ON feedback(request_id);
