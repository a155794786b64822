-- Cost totals per source, per batch and per UTC day, as a view: what `dhgq cost --by ...` prints,
-- for SQL users and dashboards. Calls, tokens, GPU seconds and dollars come from the ledger (so
-- they match it whatever became of the stage rows; a call counts on the day it was made), wall and
-- CPU seconds from the completed stage rows (on the day they completed). A source without a batch
-- is batch '-'.

CREATE VIEW dhgq.cost_totals AS
WITH spent AS (
    SELECT g.per, g.key,
           count(*) FILTER (WHERE l.status = 'succeeded') AS calls,
           count(*) FILTER (WHERE l.status = 'failed') AS failed_calls,
           coalesce(sum(l.input_tokens), 0) AS input_tokens,
           coalesce(sum(l.output_tokens), 0) AS output_tokens,
           coalesce(sum(l.gpu_seconds), 0) AS gpu_seconds,
           coalesce(sum(l.cost_usd), 0) AS cost_usd
      FROM dhgq.ledger l
     CROSS JOIN LATERAL (VALUES ('source', coalesce(l.source_id::text, '-')),
                                ('batch', coalesce(l.batch_id::text, '-')),
                                ('day', to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'))) AS g(per, key)
     GROUP BY g.per, g.key
), worked AS (
    SELECT g.per, g.key,
           sum(coalesce((st.result ->> 'stage_seconds')::numeric,
                        extract(epoch FROM st.completed_at - st.started_at)::numeric)) AS wall_seconds,
           coalesce(sum((st.result ->> 'cpu_seconds')::numeric), 0) AS cpu_seconds
      FROM dhgq.audio_processing_stages st
      JOIN public.sources_google src ON src.id = st.source_id
     CROSS JOIN LATERAL (VALUES ('source', st.source_id::text),
                                ('batch', coalesce(src.batch_id::text, '-')),
                                ('day', to_char(st.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'))) AS g(per, key)
     WHERE st.status = 'completed'
     GROUP BY g.per, g.key
)
SELECT coalesce(s.per, w.per) AS per,
       coalesce(s.key, w.key) AS key,
       CASE coalesce(s.per, w.per)
           WHEN 'source' THEN (SELECT x.name FROM public.sources_google x WHERE x.id::text = coalesce(s.key, w.key))
           WHEN 'batch' THEN (SELECT b.name FROM public.processing_batches b WHERE b.id::text = coalesce(s.key, w.key))
       END AS name,
       coalesce(s.calls, 0) AS calls,
       coalesce(s.failed_calls, 0) AS failed_calls,
       coalesce(s.input_tokens, 0) AS input_tokens,
       coalesce(s.output_tokens, 0) AS output_tokens,
       coalesce(s.gpu_seconds, 0) AS gpu_seconds,
       coalesce(w.wall_seconds, 0) AS wall_seconds,
       coalesce(w.cpu_seconds, 0) AS cpu_seconds,
       coalesce(s.cost_usd, 0) AS cost_usd
  FROM spent s
  FULL JOIN worked w ON w.per = s.per AND w.key = s.key;
COMMENT ON VIEW dhgq.cost_totals IS
    'Totals per source, batch or UTC day (column per): paid calls, tokens, GPU seconds and dollars from the '
    'ledger, wall and CPU seconds from the stage rows; `dhgq cost --by` prints the same';

REVOKE ALL ON TABLE dhgq.cost_totals FROM PUBLIC, anon, authenticated, service_role;
