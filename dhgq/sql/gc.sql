-- Retention (dhgq/gc.py): what `dhgq gc` and the worker's daily dhgq.gc task read and remove.
-- Every name is schema-qualified. "Live" means a stage row queued or processing, or a
-- Procrastinate job todo or doing, for the source: nothing of a live source is ever removed.

-- name: gc_try_lock
-- One collection at a time (the command and the task alike): a session-level advisory lock.
SELECT pg_try_advisory_lock(hashtext('dhgq.gc')::bigint);

-- name: gc_unlock
SELECT pg_advisory_unlock(hashtext('dhgq.gc')::bigint);

-- name: gc_sources
-- The sources that have a directory in the work or scratch dir (ids), and those whose extracted
-- audio is still recorded although their pipeline finished before the cutoff: whether they are
-- live, how their pipeline ended (completed, or failed: a stage failed for good or was
-- cancelled) and when, and the strings their stage rows' results hold (the paths they reference).
WITH live_jobs AS (
    SELECT DISTINCT j.args->>'source_id' AS source_id
      FROM dhgq.procrastinate_jobs j
     WHERE j.status IN ('todo', 'doing') AND j.args ? 'source_id'
), sources AS (
    SELECT src.id, src.name, src.path, src.audio_extraction_path,
           coalesce(st.live, false) OR lj.source_id IS NOT NULL AS live,
           CASE WHEN st.failed THEN 'failed' WHEN st.completed THEN 'completed' END AS outcome,
           st.finished_at
      FROM public.sources_google src
      LEFT JOIN LATERAL (
          SELECT bool_or(s.status IN ('queued', 'processing')) AS live,
                 bool_or(s.status = 'failed') AS failed,
                 bool_or(s.stage = 'summarization' AND s.status = 'completed') AS completed,
                 max(s.completed_at) AS finished_at
            FROM dhgq.audio_processing_stages s
           WHERE s.source_id = src.id
      ) st ON true
      LEFT JOIN live_jobs lj ON lj.source_id = src.id::text
     WHERE src.id = ANY(%(ids)s::uuid[]) OR src.audio_extraction_path IS NOT NULL
), judged AS (
    SELECT sources.*,
           NOT live AND outcome IS NOT NULL
               AND finished_at < now() - %(keep_audio_days)s * interval '1 day' AS expired
      FROM sources
)
SELECT judged.id::text AS source_id, judged.name, judged.path, judged.audio_extraction_path,
       judged.live, judged.outcome, judged.finished_at, judged.expired,
       ARRAY(SELECT DISTINCT v #>> '{}'
               FROM dhgq.audio_processing_stages r,
                    jsonb_path_query(coalesce(r.result, '{}'::jsonb), 'strict $.** ? (@.type() == "string")') v
              WHERE r.source_id = judged.id) AS refs
  FROM judged
 WHERE judged.id = ANY(%(ids)s::uuid[]) OR judged.expired
 ORDER BY judged.id;

-- name: gc_source_paths
-- Media files that sources name (sources_google.path) under the work or scratch dir: never removed.
SELECT src.path
  FROM public.sources_google src
 WHERE EXISTS (SELECT 1 FROM unnest(%(prefixes)s::text[]) AS prefix WHERE starts_with(src.path, prefix));

-- name: gc_lock_source
-- Taken before anything of a source is removed: retry, start (reprocess) and a user's request
-- lock the same row before they queue work, so none can start on files being removed.
SELECT id FROM public.sources_google WHERE id = %(source_id)s FOR UPDATE;

-- name: gc_clear_audio
-- The source's extracted audio is gone: say so (its artifacts too), so that a retry starts again from
-- extraction (dhgq.retry_source_v1) instead of giving a model stage a missing file.
WITH gone AS (DELETE FROM dhgq.artifacts WHERE source_id = %(source_id)s)
UPDATE public.sources_google
   SET audio_extraction_path = NULL, audio_extracted = false
 WHERE id = %(source_id)s AND (audio_extraction_path IS NOT NULL OR audio_extracted);

-- name: gc_old_jobs
-- Procrastinate jobs in a final state whose last event is older than the cutoff (as Procrastinate's
-- builtin remove_old_jobs chooses them, failed, cancelled and aborted ones included), except jobs
-- that a live row still names: a queued or processing stage row, a user's request in flight, a
-- webhook delivery not done, and the latest defer of a periodic task (its foreign key).
SELECT j.id, j.queue_name, j.status::text AS status, max(e.at) AS finished_at, count(e.id) AS events
  FROM dhgq.procrastinate_jobs j
  JOIN dhgq.procrastinate_events e ON e.job_id = j.id
 WHERE j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
   AND NOT EXISTS (SELECT 1 FROM dhgq.audio_processing_stages s
                    WHERE s.job_id = j.id::text AND s.status IN ('queued', 'processing'))
   AND NOT EXISTS (SELECT 1 FROM public.processing_jobs p
                    WHERE p.job_id = j.id::text AND p.status IN ('queued', 'processing'))
   AND NOT EXISTS (SELECT 1 FROM dhgq.webhook_deliveries w
                    WHERE w.job_id = j.id AND w.status IN ('queued', 'delivering', 'retrying'))
   AND NOT EXISTS (SELECT 1 FROM dhgq.procrastinate_periodic_defers d WHERE d.job_id = j.id)
 GROUP BY j.id
HAVING max(e.at) < now() - %(keep_jobs_days)s * interval '1 day'
 ORDER BY j.id;

-- name: gc_delete_jobs
-- The jobs gc_old_jobs listed, each checked again as it goes; their events go with them (ON DELETE CASCADE).
DELETE FROM dhgq.procrastinate_jobs j
 WHERE j.id = ANY(%(ids)s::bigint[])
   AND j.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
   AND NOT EXISTS (SELECT 1 FROM dhgq.procrastinate_events e
                    WHERE e.job_id = j.id AND e.at >= now() - %(keep_jobs_days)s * interval '1 day')
   AND NOT EXISTS (SELECT 1 FROM dhgq.audio_processing_stages s
                    WHERE s.job_id = j.id::text AND s.status IN ('queued', 'processing'))
   AND NOT EXISTS (SELECT 1 FROM public.processing_jobs p
                    WHERE p.job_id = j.id::text AND p.status IN ('queued', 'processing'))
   AND NOT EXISTS (SELECT 1 FROM dhgq.webhook_deliveries w
                    WHERE w.job_id = j.id AND w.status IN ('queued', 'delivering', 'retrying'))
   AND NOT EXISTS (SELECT 1 FROM dhgq.procrastinate_periodic_defers d WHERE d.job_id = j.id)
RETURNING j.id;

-- name: gc_old_history
-- Earlier versions of outputs replaced before the cutoff: their history rows, and the superseded
-- stage_outputs rows (reuse keys) except those a younger history row still names.
WITH history AS (
    DELETE FROM dhgq.output_history WHERE superseded_at < now() - %(keep_days)s * interval '1 day'
    RETURNING id
), outputs AS (
    DELETE FROM dhgq.stage_outputs o
     WHERE o.superseded_at < now() - %(keep_days)s * interval '1 day'
       AND NOT EXISTS (SELECT 1 FROM dhgq.output_history h
                        WHERE h.output_id = o.id AND h.superseded_at >= now() - %(keep_days)s * interval '1 day')
    RETURNING id
)
SELECT (SELECT count(*) FROM history) AS history, (SELECT count(*) FROM outputs) AS outputs;

-- name: gc_count_old_history
SELECT (SELECT count(*) FROM dhgq.output_history
         WHERE superseded_at < now() - %(keep_days)s * interval '1 day') AS history,
       (SELECT count(*) FROM dhgq.stage_outputs
         WHERE superseded_at < now() - %(keep_days)s * interval '1 day') AS outputs;

-- name: gc_existing_sources
-- Which of these ids (folders in the artifact bucket) still name a source row.
SELECT id FROM public.sources_google WHERE id = ANY(%(ids)s::uuid[]);

-- name: gc_stored_artifacts
-- The artifacts of these sources that lie in the artifact bucket.
SELECT source_id, uri, size FROM dhgq.artifacts
 WHERE source_id = ANY(%(ids)s::uuid[]) AND starts_with(uri, %(prefix)s)
 ORDER BY source_id, kind;
