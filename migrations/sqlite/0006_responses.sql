-- The Responses API and the rest of /v1: which API a measured request used, the reasoning
-- tokens a Responses answer reports apart from its output, and an embeddings request's
-- input count and vector length.
ALTER TABLE requests ADD COLUMN api TEXT NOT NULL DEFAULT 'chat';
ALTER TABLE requests ADD COLUMN reasoning_tokens BIGINT;
ALTER TABLE requests ADD COLUMN inputs BIGINT;
ALTER TABLE requests ADD COLUMN dimensions BIGINT;

-- Which version produced each stored Response: a request that continues it
-- (`previous_response_id`) and GET/DELETE /v1/responses/{id} go to the same version and
-- provider. Rows older than the retention are deleted by the gateway.
CREATE TABLE response_versions (
    response_id  TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    route        TEXT NOT NULL,
    version      TEXT NOT NULL,
    arm          TEXT NOT NULL,
    at_ms        BIGINT NOT NULL
);
CREATE INDEX response_versions_at ON response_versions(at_ms);
