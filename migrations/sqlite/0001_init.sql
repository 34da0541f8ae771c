-- Workspaces, their API keys (hashes only), and one row per measured request.
CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    key_hash      TEXT NOT NULL UNIQUE,
    key_prefix    TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE INDEX api_keys_workspace ON api_keys(workspace_id);

CREATE TABLE requests (
    request_id        TEXT PRIMARY KEY,
    at_ms             BIGINT NOT NULL,
    workspace_id      TEXT NOT NULL,
    route             TEXT NOT NULL,
    version           TEXT NOT NULL,
    arm               TEXT NOT NULL,
    stream            INTEGER NOT NULL,  -- 0 or 1: sqlx's Any driver reads no SQLite booleans
    status            INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    latency_ms        DOUBLE PRECISION NOT NULL,
    ttft_ms           DOUBLE PRECISION,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    tokens_estimated  INTEGER NOT NULL,  -- 0 or 1
    cost_usd          DOUBLE PRECISION NOT NULL,
    response_chars    BIGINT NOT NULL,
    finish_reason     TEXT
);
CREATE INDEX requests_route_at ON requests(route, at_ms);
CREATE INDEX requests_workspace_at ON requests(workspace_id, at_ms);
