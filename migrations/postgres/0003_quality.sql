-- Quality signals on each request: structured-output verdict and guardrail blocks.
ALTER TABLE requests ADD COLUMN schema_failed INTEGER;  -- NULL: no schema asked; 0 pass; 1 fail
ALTER TABLE requests ADD COLUMN guardrail_blocked INTEGER NOT NULL DEFAULT 0;
