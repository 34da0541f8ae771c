-- No query reads requests by workspace: the records are read by route (rollout totals), by
-- time (the recent listing, the retention prune) and by id (feedback). The index cost the
-- record writer a fifth b-tree on every row it wrote. Dropped; the readers' plans are
-- checked in tests/api/store.rs (`record_reads_search_an_index_on_every_engine`).
DROP INDEX IF EXISTS requests_workspace_at;
