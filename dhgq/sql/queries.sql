-- Runtime queries, one per "-- name:" header, loaded once by dhgq/queries.py.
-- Schema changes never live here: they are migrations in supabase/migrations.

-- name: begin_stage
-- Claim a queued stage for this job (naming the host and worker that run it) and read its source and
-- the artifacts earlier stages made, in one statement; no row back means the job is stale or was
-- cancelled. The claim commits without waiting for its WAL flush (synchronous_commit off for this
-- transaction only): a claim lost to a crash leaves the row queued while Procrastinate's durable job
-- record re-runs the job, which claims it again, and the stage's completing transaction, which is
-- synchronous, flushes the claim with it anyway.
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS mode),
claimed AS (
    UPDATE audio_processing_stages
       SET status = 'processing', started_at = now(), completed_at = NULL, attempts = %(attempt)s,
           progress = 0, progress_detail = NULL, error = NULL, error_class = NULL,
           host = %(host)s, worker_id = %(worker_id)s, waiting_for = NULL, waiting_until = NULL
     WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s
       AND status IN ('queued', 'processing')
    RETURNING source_id
)
SELECT src.id, src.name, src.path, src.mime_type, src.audio_duration_seconds, src.options,
       (SELECT jsonb_object_agg(a.kind, to_jsonb(a) - 'source_id' - 'created_at')
          FROM dhgq.artifacts a WHERE a.source_id = src.id) AS artifacts,
       async_commit.mode AS commit_mode
  FROM claimed JOIN sources_google src ON src.id = claimed.source_id CROSS JOIN async_commit;

-- name: lock_stages
-- Lock a source's stage rows in a fixed order, so concurrent completions serialise without deadlock.
SELECT stage, status, job_id, result FROM audio_processing_stages
 WHERE source_id = %(source_id)s AND stage = ANY(%(stages)s)
 ORDER BY stage
   FOR UPDATE;

-- name: complete_stage
UPDATE audio_processing_stages
   SET status = 'completed', completed_at = now(), progress = 100, progress_detail = NULL, result = %(result)s,
       error = NULL, error_class = NULL
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s;

-- name: fail_stage
-- A failure: back to 'queued' while Procrastinate will retry it, 'failed' when it will not.
UPDATE audio_processing_stages
   SET status = CASE WHEN %(will_retry)s THEN 'queued' ELSE 'failed' END,
       completed_at = CASE WHEN %(will_retry)s THEN NULL ELSE now() END,
       error = %(error)s, error_class = %(error_class)s
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s
   AND status = 'processing';

-- name: set_progress
-- Progress is a hint for the monitor: it commits without waiting for its WAL flush (see begin_stage).
WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true) AS mode)
UPDATE audio_processing_stages SET progress = %(progress)s, progress_detail = %(detail)s
  FROM async_commit
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s AND status = 'processing';

-- name: enqueue_stages
SELECT enqueue_stage_v1(%(source_id)s, stage) FROM unnest(%(stages)s::text[]) AS stage;

-- name: start_pipeline
SELECT start_pipeline_v1(%(source_id)s);

-- name: retry_source
SELECT retry_source_v1(%(source_id)s);

-- name: cancel_source
SELECT cancel_source_v1(%(source_id)s);

-- name: save_extraction
UPDATE sources_google
   SET audio_extracted = true, audio_extraction_path = %(wav_uri)s,
       audio_duration_seconds = %(duration)s, audio_channels = %(channels)s,
       audio_bitrate = %(bitrate)s, audio_quality_metrics = %(metrics)s
 WHERE id = %(source_id)s;

-- name: delete_artifacts
DELETE FROM dhgq.artifacts WHERE source_id = %(source_id)s;

-- name: save_artifact
INSERT INTO dhgq.artifacts (source_id, kind, uri, sha256, size, content_type, parts, host)
VALUES (%(source_id)s, %(kind)s, %(uri)s, %(sha256)s, %(size)s, %(content_type)s, %(parts)s, %(host)s)
ON CONFLICT (source_id, kind) DO UPDATE
   SET uri = EXCLUDED.uri, sha256 = EXCLUDED.sha256, size = EXCLUDED.size, content_type = EXCLUDED.content_type,
       parts = EXCLUDED.parts, host = EXCLUDED.host, created_at = now();

-- name: forget_extracted_audio
-- A model stage found the extracted audio gone or corrupt in the artifact store: the source has none
-- now, so a retry runs extraction again (dhgq.retry_source_v1) rather than fail on it once more.
WITH gone AS (DELETE FROM dhgq.artifacts WHERE source_id = %(source_id)s)
UPDATE sources_google SET audio_extraction_path = NULL, audio_extracted = false WHERE id = %(source_id)s;

-- name: register_worker
INSERT INTO dhgq.workers (id, host, pid, queues, version, artifact_store)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(version)s, %(artifact_store)s)
ON CONFLICT (id) DO UPDATE SET seen_at = now(), stopped_at = NULL;

-- name: worker_seen
UPDATE dhgq.workers SET seen_at = now() WHERE id = %(id)s;

-- name: worker_stopped
UPDATE dhgq.workers SET stopped_at = now(), seen_at = now() WHERE id = %(id)s;

-- name: upsert_document
INSERT INTO expert_documents (source_id, content_type, raw_content, processed_content, processing_status,
                              word_count, language, whisper_model_used, ai_processing_details)
VALUES (%(source_id)s, %(content_type)s, %(raw_content)s, %(processed_content)s, 'completed',
        %(word_count)s, %(language)s, %(whisper_model_used)s, %(ai_processing_details)s)
ON CONFLICT (source_id, content_type) DO UPDATE
   SET raw_content = EXCLUDED.raw_content, processed_content = EXCLUDED.processed_content,
       processing_status = 'completed', word_count = EXCLUDED.word_count, language = EXCLUDED.language,
       whisper_model_used = EXCLUDED.whisper_model_used,
       ai_processing_details = EXCLUDED.ai_processing_details
RETURNING id;

-- name: document
SELECT id, raw_content, processed_content, language, whisper_model_used
  FROM expert_documents WHERE source_id = %(source_id)s AND content_type = %(content_type)s;

-- name: update_document_content
UPDATE expert_documents SET processed_content = %(processed_content)s WHERE id = %(document_id)s;

-- name: delete_segments
DELETE FROM audio_segments WHERE expert_document_id = %(document_id)s;

-- name: insert_segment
INSERT INTO audio_segments (expert_document_id, start_time, end_time, text, speaker_id, confidence, metadata)
VALUES (%(document_id)s, %(start)s, %(end)s, %(text)s, %(speaker_id)s, %(confidence)s, %(metadata)s);

-- name: delete_speakers
DELETE FROM speaker_profiles WHERE source_id = %(source_id)s;

-- name: insert_speaker
INSERT INTO speaker_profiles (source_id, label, embedding, embedding_model, total_speaking_seconds,
                              segment_count, metadata)
VALUES (%(source_id)s, %(label)s, %(embedding)s, %(embedding_model)s, %(seconds)s, %(segments)s, %(metadata)s)
RETURNING id;

-- name: speakers
SELECT id, label FROM speaker_profiles WHERE source_id = %(source_id)s;

-- name: update_speaker_totals
UPDATE speaker_profiles SET total_speaking_seconds = %(seconds)s, segment_count = %(segments)s
 WHERE id = %(speaker_id)s;

-- name: insert_source
-- Any client starts work this way: the INSERT's trigger queues extraction in the same transaction.
-- Its options pass the same checks as those of a user's request (dhgq.request_options_v1).
INSERT INTO sources_google (name, path, mime_type, size, content_hash, metadata, batch_id, options)
VALUES (%(name)s, %(path)s, %(mime_type)s, %(size)s, %(content_hash)s, %(metadata)s, %(batch_id)s,
        dhgq.request_options_v1(%(options)s))
RETURNING id;

-- name: source_by_hash
SELECT id FROM sources_google WHERE content_hash = %(content_hash)s AND NOT is_deleted LIMIT 1;

-- name: notify_workers
-- Wake idle workers now (Procrastinate's own channel) instead of at their next poll.
SELECT pg_notify('procrastinate_queue_v1#' || %(queue)s, json_build_object('type', 'job_inserted', 'job_id', %(job_id)s)::text),
       pg_notify('procrastinate_any_queue_v1', json_build_object('type', 'job_inserted', 'job_id', %(job_id)s)::text);

-- name: ready_jobs
SELECT count(*) FROM procrastinate_jobs
 WHERE queue_name = ANY(%(queues)s)
   AND (status = 'doing' OR (status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())));

-- name: claim_webhook
-- Take a webhook delivery for one attempt, unless it went through already (then no row: a job run
-- again sends nothing twice). The row says 'delivering' until the attempt is recorded. With it: the
-- request owner's signing secrets (the current one, and the previous one during its 24 hours).
UPDATE webhook_deliveries d
   SET status = 'delivering', attempts = d.attempts + 1, next_attempt_at = NULL
 WHERE d.request_id = %(request_id)s AND d.outcome = %(outcome)s AND d.status <> 'delivered'
RETURNING d.request_id, d.outcome, d.url, d.event, d.signer, d.attempts,
          coalesce((SELECT array_remove(ARRAY[s.secret, CASE WHEN s.previous_until > now() THEN s.previous_secret END],
                                        NULL)
                      FROM webhook_secrets s JOIN processing_jobs j ON j.user_id = s.user_id
                     WHERE j.id = d.request_id), '{}') AS owner_secrets;

-- name: webhook_delivered
UPDATE webhook_deliveries
   SET status = 'delivered', delivered_at = now(), response_status = %(response_status)s, last_error = NULL,
       next_attempt_at = NULL
 WHERE request_id = %(request_id)s AND outcome = %(outcome)s;

-- name: webhook_failed
-- A failed attempt: 'retrying' (next_attempt_at says when) while Procrastinate will run the job
-- again, 'failed' when it will not.
UPDATE webhook_deliveries
   SET status = CASE WHEN %(will_retry)s THEN 'retrying' ELSE 'failed' END,
       next_attempt_at = CASE WHEN %(will_retry)s THEN now() + make_interval(secs => %(retry_in)s) END,
       response_status = %(response_status)s, last_error = %(error)s
 WHERE request_id = %(request_id)s AND outcome = %(outcome)s;
