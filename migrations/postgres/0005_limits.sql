-- Per-workspace limits, as the JSON the admin API took (a request rate, a burst, tokens
-- per minute, USD per day; absent keys fall back to the config's defaults).
CREATE TABLE workspace_limits (
    workspace_id  TEXT PRIMARY KEY REFERENCES workspaces(id),
    limits        TEXT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
