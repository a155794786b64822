-- Queries of the dhgq command line and the monitor (read models, source lookup), by name.

-- name: cli_find_source
-- A source by full id, id prefix or exact name; the caller decides what several matches mean.
SELECT id, name, path
  FROM sources_google
 WHERE NOT is_deleted
   AND (id::text LIKE %(prefix)s OR name = %(ref)s)
 ORDER BY (id::text = %(ref)s) DESC, created_at DESC
 LIMIT 6;

-- name: cli_now
SELECT now();

-- name: cli_stage_counts
SELECT stage, queued, processing, completed, failed, completed_last_5_min FROM pipeline_stage_counts;

-- name: cli_sources
-- One row per source with each stage's status and progress, newest activity first.
SELECT p.source_id, p.name, p.path, p.state, p.progress, p.error, p.audio_duration_seconds,
       p.created_at, p.updated_at,
       coalesce((SELECT jsonb_object_agg(st.stage, jsonb_build_object('status', st.status,
                                                                      'progress', st.progress,
                                                                      'detail', st.progress_detail))
                   FROM audio_processing_stages st WHERE st.source_id = p.source_id), '{}'::jsonb) AS stages
  FROM pipeline_status p
 WHERE (%(ids)s::uuid[] IS NULL OR p.source_id = ANY(%(ids)s::uuid[]))
 ORDER BY p.updated_at DESC, p.name
 LIMIT %(limit)s;

-- name: cli_source_stages
-- A source's stage rows in pipeline order, with how long each ran; whether the output was reused
-- (from where), whether it is stale (and why), its key's versions, and the last re-run asked for.
SELECT st.stage, st.status, st.progress, st.progress_detail, st.attempts, st.job_id, st.error_class, st.error,
       st.started_at, st.completed_at, st.host,
       extract(epoch FROM st.completed_at - st.started_at)::float8 AS seconds, st.result,
       st.result -> 'reused_from' AS reused_from,
       stale.output_id IS NOT NULL AS stale,
       stale.reasons AS stale_reasons,
       CASE WHEN o.id IS NOT NULL THEN jsonb_build_object(
           'key', o.key, 'engine', o.engine, 'engine_version', o.engine_version, 'model', o.model,
           'model_version', o.model_version, 'prompt_version', o.prompt_version,
           'current_model_version', stale.current_model_version,
           'current_prompt_version', stale.current_prompt_version, 'recorded_at', o.created_at) END AS output,
       rerun.rerun,
       c.cost_usd::float8 AS cost_usd,
       c.paid_calls
  FROM audio_processing_stages st
  LEFT JOIN dhgq.costs c ON c.stage_id = st.id
  LEFT JOIN dhgq.stage_outputs o ON o.source_id = st.source_id AND o.stage = st.stage AND o.superseded_at IS NULL
  LEFT JOIN dhgq.stale_outputs stale ON stale.output_id = o.id
  LEFT JOIN LATERAL (
      SELECT jsonb_build_object('reason', r.reason, 'fresh', r.fresh, 'requested_at', r.requested_at,
                                'requested_by', r.requested_by, 'options', r.options) AS rerun
        FROM dhgq.stage_reruns r
       WHERE r.source_id = st.source_id AND r.stage = st.stage
       ORDER BY r.requested_at DESC, r.id DESC
       LIMIT 1
  ) rerun ON true
 WHERE st.source_id = %(source_id)s
 ORDER BY array_position(ARRAY['extraction', 'transcription', 'diarization', 'summarization'], st.stage);

-- name: cli_documents
SELECT content_type, processed_content, raw_content, language, whisper_model_used
  FROM expert_documents
 WHERE source_id = %(source_id)s AND content_type IN ('transcript', 'summary');

-- name: cli_jobs
-- Stage rows across sources, filtered by status and stage (NULL means any).
SELECT st.source_id, src.name, st.stage, st.status, st.progress, st.attempts, st.job_id, j.status AS job_status,
       st.error_class, st.error, st.started_at, st.completed_at,
       extract(epoch FROM st.completed_at - st.started_at)::float8 AS seconds, st.updated_at
  FROM audio_processing_stages st
  JOIN sources_google src ON src.id = st.source_id
  LEFT JOIN procrastinate_jobs j ON j.id::text = st.job_id
 WHERE (%(status)s::text IS NULL OR st.status = %(status)s)
   AND (%(stage)s::text IS NULL OR st.stage = %(stage)s)
 ORDER BY st.updated_at DESC
 LIMIT %(limit)s;

-- name: cli_dead_letter
SELECT stage_id, source_id, source_name, path, stage, error_class, error, attempts, job_id, failed_at
  FROM dead_letter;

-- name: cli_dead_letter_sources
SELECT DISTINCT source_id FROM dead_letter;

-- name: cli_diarization_result
SELECT result -> 'diarization' AS diarization
  FROM audio_processing_stages
 WHERE source_id = %(source_id)s AND stage = 'diarization' AND status = 'completed';

-- name: cli_live_workers
-- Workers whose heartbeat is recent, and stage jobs finished in the last minute.
SELECT (SELECT count(*) FROM procrastinate_workers
         WHERE last_heartbeat > now() - make_interval(secs => %(stalled_after)s)) AS workers,
       (SELECT count(*) FROM procrastinate_events
         WHERE type IN ('succeeded', 'failed') AND at > now() - interval '1 minute') AS jobs_last_minute;

-- name: cli_fleet
-- The worker processes seen in the last day (or still alive), newest first: alive when seen within three
-- recovery rounds (a worker renews seen_at every stalled_after / 3 s) and not stopped; the stages each
-- holds now.
SELECT w.id, w.host, w.pid, w.queues, w.artifact_store, w.started_at, w.seen_at,
       w.stopped_at IS NULL AND w.seen_at > now() - make_interval(secs => %(stalled_after)s * 2) AS alive,
       (SELECT count(*) FROM audio_processing_stages st
         WHERE st.worker_id = w.id AND st.status = 'processing') AS stages_in_hand
  FROM dhgq.workers w
 WHERE w.seen_at > now() - interval '1 day'
 ORDER BY alive DESC, w.host, w.started_at DESC
 LIMIT 100;

-- name: lock_content_hash
-- Serialise adding the same content from two processes, so it becomes one source.
SELECT pg_advisory_xact_lock(hashtextextended(%(content_hash)s, 0));

-- name: listen_stages
-- LISTEN, and ask the stage trigger to NOTIFY for the next 30 s (repeat within that).
SELECT listen_stages_v1();

-- name: unlisten_stages
SELECT unlisten_stages_v1();

-- name: cli_next_retry_in
-- Seconds until the source's next waiting job may run (a retry backs off); NULL when none waits.
SELECT extract(epoch FROM min(coalesce(j.scheduled_at, now())) - now())::float8
  FROM audio_processing_stages st
  JOIN procrastinate_jobs j ON j.id::text = st.job_id
 WHERE st.source_id = %(source_id)s AND j.status = 'todo';

-- name: cli_webhooks
-- Webhook deliveries, newest first; failed ones only with %(failed)s.
SELECT d.request_id::text, d.outcome, d.status, d.attempts, d.response_status, d.next_attempt_at, d.delivered_at,
       d.signer, d.last_error, d.updated_at
  FROM webhook_deliveries d
 WHERE NOT %(failed)s OR d.status = 'failed'
 ORDER BY d.updated_at DESC
 LIMIT %(limit)s;

-- name: cli_webhook_redeliver
SELECT webhook_redeliver_v1(%(request_id)s::uuid, %(outcome)s);

-- name: cli_webhooks_failed
SELECT request_id::text, outcome FROM webhook_deliveries WHERE status = 'failed' ORDER BY updated_at;
