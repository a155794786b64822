-- What Supabase's Security Advisor (splinter) still reported on a migrated database, answered.
--
-- rls_enabled_no_policy (INFO, security), twice:
-- - dhgq.stage_listeners is in the private schema, which no API role may use, like every other table
--   there (none of which has row-level security): it is reached by dhgq's own functions only. Row-level
--   security on it said nothing the schema's privileges do not; it is switched off, as on its neighbours.
-- - public.processing_batches is the operator's (`dhgq process DIR` makes batches; users' requests
--   are not in one): no API role has a privilege on it, and this policy says so where the Advisor and
--   a reader of pg_policies look, and denies anon and authenticated even if a grant came back.
-- unindexed_foreign_keys (INFO, performance), three: deleting a source scanned presentations and
-- presentation_assets, and dropping an output scanned dhgq.output_history.

ALTER TABLE dhgq.stage_listeners DISABLE ROW LEVEL SECURITY;

CREATE POLICY "Batches are the operator's" ON public.processing_batches
    AS RESTRICTIVE FOR ALL TO anon, authenticated USING (false) WITH CHECK (false);
COMMENT ON POLICY "Batches are the operator's" ON public.processing_batches IS
    'Users have no batches: the operator makes them (dhgq process DIR); the API roles have no privileges here either';

CREATE INDEX idx_presentations_source_id ON public.presentations(source_id);
CREATE INDEX idx_presentation_assets_source_id ON public.presentation_assets(source_id);
CREATE INDEX idx_output_history_output_id ON dhgq.output_history(output_id);
