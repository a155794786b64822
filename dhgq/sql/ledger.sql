-- The ledger of paid calls, costs and budgets (dhgq/ledger.py, dhgq/budget.py, dhgq cost / budget).
-- Every name is schema-qualified: the Modal backend writes the ledger from a model host too.

-- name: ledger_answer
-- The answer of a call that already succeeded for this source: a retried summary reuses it.
SELECT answer FROM dhgq.ledger
 WHERE source_id = %(source_id)s AND fingerprint = %(fingerprint)s AND status = 'succeeded'
   AND answer IS NOT NULL
 ORDER BY id DESC
 LIMIT 1;

-- name: ledger_start
-- A call about to be made. An earlier row of the same request that never finished (its worker
-- died mid-call) is closed as failed: nobody will finish it. The batch is the source's, now.
WITH abandoned AS (
    UPDATE dhgq.ledger
       SET status = 'failed', finished_at = now(), error = 'abandoned: no answer was recorded (the worker stopped)'
     WHERE source_id = %(source_id)s AND fingerprint = %(fingerprint)s AND status = 'started'
)
INSERT INTO dhgq.ledger (kind, provider, model, fingerprint, source_id, stage, batch_id, job_id, request,
                         gpu_type, estimated_cost_usd)
SELECT %(kind)s, %(provider)s, %(model)s, %(fingerprint)s, %(source_id)s, %(stage)s,
       (SELECT batch_id FROM public.sources_google WHERE id = %(source_id)s), %(job_id)s, %(request)s,
       %(gpu_type)s, %(estimated_cost_usd)s
RETURNING id;

-- name: ledger_succeeded
UPDATE dhgq.ledger
   SET status = 'succeeded', finished_at = now(), answer = %(answer)s, response_model = %(response_model)s,
       input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, gpu_seconds = %(gpu_seconds)s,
       latency_s = %(latency_s)s, cost_usd = %(cost_usd)s, error = NULL
 WHERE id = %(id)s;

-- name: ledger_failed
-- A failed call; tokens and cost when the API answered (an unusable answer is paid for all the same).
UPDATE dhgq.ledger
   SET status = 'failed', finished_at = now(), error = %(error)s, input_tokens = %(input_tokens)s,
       output_tokens = %(output_tokens)s, gpu_seconds = %(gpu_seconds)s, latency_s = %(latency_s)s,
       cost_usd = %(cost_usd)s
 WHERE id = %(id)s;

-- name: cost_totals
-- Totals per source, batch or UTC day since a date (NULL: all): calls and dollars from the
-- ledger (so they match it, whatever became of the stage rows), wall seconds from the stage rows.
WITH spent AS (
    SELECT CASE %(by)s WHEN 'source' THEN coalesce(l.source_id::text, '-')
                       WHEN 'batch' THEN coalesce(l.batch_id::text, '-')
                       ELSE to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') END AS key,
           count(*) FILTER (WHERE l.status = 'succeeded') AS calls,
           count(*) FILTER (WHERE l.status = 'failed') AS failed_calls,
           coalesce(sum(l.input_tokens), 0) AS input_tokens,
           coalesce(sum(l.output_tokens), 0) AS output_tokens,
           coalesce(sum(l.gpu_seconds), 0) AS gpu_seconds,
           coalesce(sum(l.cost_usd), 0) AS cost_usd
      FROM dhgq.ledger l
     WHERE %(since)s::date IS NULL OR l.created_at >= (%(since)s::date)::timestamp AT TIME ZONE 'UTC'
     GROUP BY 1
), worked AS (
    SELECT CASE %(by)s WHEN 'source' THEN st.source_id::text
                       WHEN 'batch' THEN coalesce(src.batch_id::text, '-')
                       ELSE to_char(st.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') END AS key,
           sum(coalesce((st.result ->> 'stage_seconds')::numeric,
                        extract(epoch FROM st.completed_at - st.started_at)::numeric)) AS wall_seconds
      FROM dhgq.audio_processing_stages st
      JOIN public.sources_google src ON src.id = st.source_id
     WHERE st.status = 'completed'
       AND (%(since)s::date IS NULL OR st.completed_at >= (%(since)s::date)::timestamp AT TIME ZONE 'UTC')
     GROUP BY 1
)
SELECT key,
       CASE %(by)s WHEN 'source' THEN (SELECT name FROM public.sources_google WHERE id = nullif(key, '-')::uuid)
                   WHEN 'batch' THEN (SELECT name FROM public.processing_batches WHERE id = nullif(key, '-')::uuid)
       END AS name,
       coalesce(spent.calls, 0) AS calls,
       coalesce(spent.failed_calls, 0) AS failed_calls,
       coalesce(spent.input_tokens, 0) AS input_tokens,
       coalesce(spent.output_tokens, 0) AS output_tokens,
       coalesce(spent.gpu_seconds, 0) AS gpu_seconds,
       coalesce(worked.wall_seconds, 0) AS wall_seconds,
       coalesce(spent.cost_usd, 0) AS cost_usd
  FROM spent FULL JOIN worked USING (key)
 ORDER BY CASE WHEN %(by)s = 'day' THEN key END DESC, coalesce(spent.cost_usd, 0) DESC, key;

-- name: insert_batch
-- One `dhgq process` invocation: the batch its new sources belong to (and budgets and costs count by).
INSERT INTO public.processing_batches (name, status, total_files, processor_config, started_at)
VALUES (%(name)s, 'processing', %(total_files)s, %(config)s, now())
RETURNING id;

-- name: delete_empty_batch
DELETE FROM public.processing_batches b
 WHERE b.id = %(batch_id)s AND NOT EXISTS (SELECT 1 FROM public.sources_google s WHERE s.batch_id = b.id);

-- name: budget_caps
SELECT key, value #>> '{}' AS value FROM dhgq.config WHERE key IN ('budget_daily_usd', 'budget_batch_usd');

-- name: budget_set_cap
-- A cap in dollars, or NULL for none; the config trigger re-queues the stages waiting for budget.
INSERT INTO dhgq.config (key, value, description)
VALUES (%(key)s, coalesce(to_jsonb(%(usd)s::numeric), 'null'::jsonb), %(description)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

-- name: budget_lock
-- Taken (shared) by every budget check, before the stage row: a change of caps takes it exclusively
-- (dhgq.resume_waiting_budget_v1), so it waits for the checks in progress and sees their holds.
SELECT pg_advisory_xact_lock_shared(hashtextextended('dhgq.budget', 0));

-- name: budget_spend
-- What the UTC day and the source's batch have spent: finished calls at their cost, calls still
-- running (started in the last hour) at their estimate.
WITH source AS (
    SELECT src.batch_id, b.name AS batch_name
      FROM public.sources_google src LEFT JOIN public.processing_batches b ON b.id = src.batch_id
     WHERE src.id = %(source_id)s
), calls AS (
    SELECT l.created_at, l.batch_id,
           CASE WHEN l.status = 'started' AND l.created_at > now() - interval '1 hour' THEN l.estimated_cost_usd
                ELSE l.cost_usd END AS usd
      FROM dhgq.ledger l
     WHERE l.created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        OR l.batch_id = (SELECT batch_id FROM source)
)
SELECT coalesce(sum(usd) FILTER (WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'), 0)
           AS today_usd,
       (SELECT batch_id FROM source) AS batch_id,
       (SELECT batch_name FROM source) AS batch_name,
       coalesce(sum(usd) FILTER (WHERE batch_id = (SELECT batch_id FROM source)), 0) AS batch_usd
  FROM calls;

-- name: budget_stage_row
-- The stage row a budget check is about, locked, while it is still this job's to start or hold.
SELECT status FROM dhgq.audio_processing_stages
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s
   AND status IN ('queued', 'processing', 'waiting_budget')
   FOR UPDATE;

-- name: budget_hold
SELECT dhgq.hold_for_budget_v1(%(source_id)s, %(stage)s, %(job_id)s, %(reason)s, %(delay_seconds)s);

-- name: budget_release
-- Admitted after waiting: the row goes back to queued, for the stage's claim.
UPDATE dhgq.audio_processing_stages SET status = 'queued', error = NULL
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s AND status = 'waiting_budget';

-- name: budget_waiting
SELECT st.source_id, src.name, st.stage, st.error AS reason, j.scheduled_at AS next_check
  FROM dhgq.audio_processing_stages st
  JOIN public.sources_google src ON src.id = st.source_id
  LEFT JOIN dhgq.procrastinate_jobs j ON j.id::text = st.job_id
 WHERE st.status = 'waiting_budget'
 ORDER BY st.updated_at;

-- name: budget_today
SELECT coalesce(sum(cost_usd), 0) FROM dhgq.ledger
 WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';

-- name: ledger_remote_call
-- The Modal call a GPU row stands for, once spawned: what a later worker or `dhgq cancel` cancels.
UPDATE dhgq.ledger SET remote_call_id = %(call_id)s WHERE id = %(id)s;

-- name: ledger_open_remote_calls
-- Modal calls still open for a source (and stage): their worker stopped before they ended.
SELECT id, remote_call_id, request ->> 'function' AS function FROM dhgq.ledger
 WHERE source_id = %(source_id)s AND (%(stage)s::text IS NULL OR stage = %(stage)s)
   AND status = 'started' AND remote_call_id IS NOT NULL
 ORDER BY id;

-- name: ledger_close_abandoned
UPDATE dhgq.ledger
   SET status = 'failed', finished_at = now(),
       error = 'cancelled: the worker that waited on this Modal call stopped before it ended'
 WHERE id = %(id)s AND status = 'started';

-- name: ledger_orphaned_remote_calls
-- Modal calls still open although their stage is no longer processing (cancelled, failed, or queued
-- again after its worker stopped) and at least a minute old: nobody will wait on them.
SELECT l.id, l.remote_call_id, l.request ->> 'function' AS function
  FROM dhgq.ledger l
  JOIN dhgq.audio_processing_stages st ON st.source_id = l.source_id AND st.stage = l.stage
 WHERE l.status = 'started' AND l.remote_call_id IS NOT NULL AND st.status <> 'processing'
   AND l.created_at < now() - interval '1 minute'
 ORDER BY l.id
 LIMIT 100;

-- name: gpu_budget_basis
-- What a Modal stage's budget estimate is made of: the source's audio length, and the GPU seconds per
-- second of audio of the stage's recent successful calls (NULL before there are any).
SELECT (SELECT audio_duration_seconds FROM public.sources_google WHERE id = %(source_id)s) AS duration,
       (SELECT avg(recent.gpu_seconds / nullif((recent.request ->> 'audio_s')::numeric, 0))
          FROM (SELECT gpu_seconds, request FROM dhgq.ledger
                 WHERE kind = 'gpu' AND stage = %(stage)s AND status = 'succeeded' AND gpu_seconds IS NOT NULL
                 ORDER BY id DESC LIMIT 50) recent) AS rate;
