-- Queue controls (dhgq/queues.py) and what the metrics read of the queues (dhgq/metrics.py).
-- The functions and the table are in supabase/migrations/20261204002000_queue_controls.sql.

-- name: fetch_job_unless_paused
-- Procrastinate's fetch_job, through dhgq.fetch_job_v1: the same columns, paused queues left out.
SELECT id, status, task_name, priority, lock, queueing_lock, args, scheduled_at, queue_name, attempts, worker_id
  FROM dhgq.fetch_job_v1(%(queues)s::varchar[], %(worker_id)s);

-- name: queue_pause
SELECT dhgq.pause_queue_v1(%(queue)s, %(reason)s, %(by)s, %(resume_at)s);

-- name: queue_resume
SELECT dhgq.resume_queue_v1(%(queue)s);

-- name: queue_pauses
-- The pauses in force (a timed pause whose time has passed is over), and timed ones that ended,
-- which are removed on the way.
WITH ended AS (
    DELETE FROM dhgq.queue_pauses WHERE resume_at <= now() - interval '1 hour'
)
SELECT queue_name, reason, paused_by, paused_at, resume_at
  FROM dhgq.queue_pauses
 WHERE resume_at IS NULL OR resume_at > now()
 ORDER BY queue_name;

-- name: queue_depths
-- Per queue: jobs ready (todo and due), scheduled for later, running, and how long the oldest ready
-- job has waited (since it was deferred or came due, whichever is later). Only open jobs are read,
-- through Procrastinate's partial index on them, however long the history of finished jobs.
WITH open AS (
    SELECT id, queue_name, status, scheduled_at
      FROM procrastinate_jobs
     WHERE status = ANY (ARRAY['todo'::procrastinate_job_status, 'doing'::procrastinate_job_status])
),
counts AS (
    SELECT queue_name,
           count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())) AS ready,
           count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
           count(*) FILTER (WHERE status = 'doing') AS running,
           min(id) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())) AS oldest_id
      FROM open
     GROUP BY queue_name
)
SELECT c.queue_name, c.ready, c.scheduled, c.running,
       coalesce(extract(epoch FROM now() - greatest(
           (SELECT min(e.at) FROM procrastinate_events e WHERE e.job_id = c.oldest_id AND e.type = 'deferred'),
           (SELECT j.scheduled_at FROM procrastinate_jobs j WHERE j.id = c.oldest_id))), 0)::float
           AS oldest_ready_seconds
  FROM counts c
 ORDER BY c.queue_name;

-- name: stages_waiting
-- Stages held for the API, for disk space or for the budget (status waiting_budget), per stage and reason.
SELECT stage, CASE WHEN status = 'waiting_budget' THEN 'budget' ELSE waiting_for END AS waiting_for,
       count(*) AS stages
  FROM audio_processing_stages
 WHERE status IN ('queued', 'waiting_budget') AND (status = 'waiting_budget' OR waiting_for IS NOT NULL)
 GROUP BY 1, 2;

-- name: ledger_today
-- What paid calls cost since the start of the UTC day, by kind and provider (the budgets' day), through
-- the ledger's index on created_at.
SELECT kind, provider, count(*) FILTER (WHERE status = 'succeeded') AS calls,
       count(*) FILTER (WHERE status = 'failed') AS failed_calls,
       coalesce(sum(coalesce(cost_usd, 0)), 0)::float AS cost_usd
  FROM dhgq.ledger
 WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
 GROUP BY kind, provider;

-- name: hold_stage
SELECT dhgq.hold_stage_v1(%(source_id)s, %(stage)s, %(job_id)s, %(waiting_for)s, %(reason)s, %(until)s);

-- name: stage_api_waits
SELECT api_waits FROM audio_processing_stages
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND job_id = %(job_id)s;

-- name: time_in
-- The database's clock, some seconds on: holds and pauses are timed by one clock, whatever the machine's.
SELECT now() + make_interval(secs => %(seconds)s);
