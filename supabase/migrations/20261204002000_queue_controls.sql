-- Queue controls: a priority per request, queues paused by hand or by the API, and stages that wait.
--
-- Priority. A request (processing_jobs.options, or `dhgq process --priority N`) may give
-- `priority`, a whole number from -100 to 100 (default 0). It is kept in the source's options, and
-- every stage job of the source is deferred with it: Procrastinate's fetch takes the todo job of
-- the highest priority first (then the oldest), so a high-priority talk queued behind a backlog
-- runs at the next free slot of each stage. A retry keeps its job's priority.
--
-- Paused queues. A row of dhgq.queue_pauses pauses its queue: workers do not fetch its jobs (they
-- fetch through dhgq.fetch_job_v1, which leaves paused queues out), so its jobs stay todo and its
-- running jobs finish. `dhgq queue pause QUEUE` pauses until `dhgq queue resume QUEUE`
-- (resume_at NULL); a rate limit of the Claude API pauses the summarization queue until the time
-- the API named (resume_at), after which the row no longer counts. Every worker on every machine
-- reads the same rows at each fetch: no restart, no message to send.
--
-- Waiting stages. A stage that may not run yet is held, not failed: its row stays 'queued' and
-- says what it waits for (waiting_for: 'api' for a rate limit, 'disk' for the free-space floor
-- of extraction), why (error) and until when (waiting_until), and a job to run it again is queued
-- for that time, with the stage's priority. The job that was held ends without failing, so a
-- wait is not an attempt; waits for the API are counted (api_waits) against their own, more
-- generous limit (DHGQ_API_MAX_WAITS).

-- 1. Priority --------------------------------------------------------------------------------------

-- As in 20261130000200_user_access, with `priority`.
CREATE OR REPLACE FUNCTION dhgq.request_options_v1(p_options jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_key text;
    v_value jsonb;
    v_models text[] := ARRAY(SELECT jsonb_array_elements_text(value) FROM dhgq.config WHERE key = 'whisper_models');
    v_max_speakers integer := (SELECT value::integer FROM dhgq.config WHERE key = 'max_speakers');
BEGIN
    IF p_options IS NULL OR p_options = 'null'::jsonb THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object, not %', jsonb_typeof(p_options)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(p_options::text) > 4096 THEN
        RAISE EXCEPTION 'options are too large (% characters, at most 4096)', length(p_options::text)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_options) LOOP
        IF v_key = 'model' THEN
            IF jsonb_typeof(v_value) <> 'string' OR NOT (v_value #>> '{}') = ANY (v_models) THEN
                RAISE EXCEPTION 'options.model must be one of: %', array_to_string(v_models, ', ')
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v_key = 'language' THEN
            IF jsonb_typeof(v_value) <> 'string' OR (v_value #>> '{}') !~ '^[a-z]{2,3}$' THEN
                RAISE EXCEPTION 'options.language must be a two- or three-letter ISO 639 code such as "en"'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v_key IN ('num_speakers', 'min_speakers', 'max_speakers') THEN
            -- a CASE, so that only numbers are cast
            IF (CASE WHEN jsonb_typeof(v_value) = 'number'
                     THEN v_value::numeric <> trunc(v_value::numeric) OR v_value::numeric NOT BETWEEN 1 AND v_max_speakers
                     ELSE true END) THEN
                RAISE EXCEPTION 'options.% must be a whole number from 1 to %', v_key, v_max_speakers
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v_key = 'priority' THEN
            IF (CASE WHEN jsonb_typeof(v_value) = 'number'
                     THEN v_value::numeric <> trunc(v_value::numeric) OR v_value::numeric NOT BETWEEN -100 AND 100
                     ELSE true END) THEN
                RAISE EXCEPTION 'options.priority must be a whole number from -100 to 100 (higher runs first)'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown option %; allowed: model, language, num_speakers, min_speakers, max_speakers, priority',
                quote_literal(left(v_key, 64)) USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF p_options ? 'num_speakers' AND (p_options ? 'min_speakers' OR p_options ? 'max_speakers') THEN
        RAISE EXCEPTION 'give options.num_speakers, or min_speakers and max_speakers, not both'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_options ->> 'min_speakers')::numeric > (p_options ->> 'max_speakers')::numeric THEN
        RAISE EXCEPTION 'options.min_speakers is more than options.max_speakers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_options;
END;
$$;

-- The priority of a source's stage jobs: its options' (checked by request_options_v1), else 0.
CREATE FUNCTION dhgq.source_priority_v1(p_source_id uuid) RETURNS integer
    LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT coalesce((SELECT (options ->> 'priority')::integer FROM public.sources_google WHERE id = p_source_id), 0)
$$;

-- As in 20261130000100_private_schema, with the source's priority, and a new run's waits cleared.
CREATE OR REPLACE FUNCTION dhgq.enqueue_stage_v1(p_source_id uuid, p_stage text, p_delay_seconds integer DEFAULT 0)
    RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_job_id bigint;
BEGIN
    IF p_stage NOT IN ('extraction', 'transcription', 'diarization', 'summarization') THEN
        RAISE EXCEPTION 'unknown stage %', p_stage USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        SELECT (dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW(
            p_stage, 'dhgq.' || p_stage, dhgq.source_priority_v1(p_source_id),
            p_stage || ':' || p_source_id, p_stage || ':' || p_source_id,
            jsonb_build_object('source_id', p_source_id),
            CASE WHEN p_delay_seconds > 0 THEN now() + make_interval(secs => p_delay_seconds) END
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        RETURN NULL;  -- the same stage is already queued for this source
    END;
    INSERT INTO dhgq.audio_processing_stages AS s
        (source_id, stage, status, job_id, queue_name, attempts, progress)
    VALUES (p_source_id, p_stage, 'queued', v_job_id::text, p_stage, 0, 0)
    ON CONFLICT (source_id, stage) DO UPDATE
        SET status = 'queued', job_id = EXCLUDED.job_id, queue_name = EXCLUDED.queue_name,
            started_at = NULL, completed_at = NULL, error = NULL, error_class = NULL,
            attempts = 0, progress = 0, result = NULL,
            waiting_for = NULL, waiting_until = NULL, api_waits = 0;
    RETURN v_job_id;
END;
$$;

-- 2. Waiting stages (the columns enqueue_stage_v1 above clears) ---------------------------------------

ALTER TABLE dhgq.audio_processing_stages
    ADD COLUMN waiting_for text CHECK (waiting_for IN ('api', 'disk')),
    ADD COLUMN waiting_until timestamptz,
    ADD COLUMN api_waits integer NOT NULL DEFAULT 0 CHECK (api_waits >= 0);
COMMENT ON COLUMN dhgq.audio_processing_stages.waiting_for IS
    'A queued stage held until waiting_until: api (the Claude API asked to wait), disk (below the free-space floor)';
COMMENT ON COLUMN dhgq.audio_processing_stages.api_waits IS
    'Times this run of the stage waited for the API (limited by DHGQ_API_MAX_WAITS; not counted as attempts)';

-- Hold a stage until p_until: its row queued with the reason, a job to run it then. Called by the
-- stage's own job (p_job_id) while the row is still its own; returns the new job (NULL: not its own).
CREATE FUNCTION dhgq.hold_stage_v1(p_source_id uuid, p_stage text, p_job_id text, p_waiting_for text,
                                   p_reason text, p_until timestamptz)
    RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_job_id bigint;
BEGIN
    PERFORM 1 FROM dhgq.audio_processing_stages
     WHERE source_id = p_source_id AND stage = p_stage AND job_id = p_job_id
       AND status IN ('queued', 'processing')
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;  -- cancelled or queued again meanwhile
    END IF;
    BEGIN
        SELECT (dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW(
            p_stage, 'dhgq.' || p_stage, dhgq.source_priority_v1(p_source_id),
            p_stage || ':' || p_source_id, p_stage || ':' || p_source_id,
            jsonb_build_object('source_id', p_source_id),
            greatest(p_until, now())
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        SELECT id INTO v_job_id FROM dhgq.procrastinate_jobs
         WHERE queueing_lock = p_stage || ':' || p_source_id AND status = 'todo';
    END;
    UPDATE dhgq.audio_processing_stages
       SET status = 'queued', error = p_reason, error_class = NULL, job_id = v_job_id::text,
           waiting_for = p_waiting_for, waiting_until = greatest(p_until, now()),
           api_waits = api_waits + CASE WHEN p_waiting_for = 'api' THEN 1 ELSE 0 END,
           started_at = NULL, completed_at = NULL, progress = 0, progress_detail = NULL
     WHERE source_id = p_source_id AND stage = p_stage;
    RETURN v_job_id;
END;
$$;

-- As in 20261130000700_ledger_budgets, with the source's priority.
CREATE OR REPLACE FUNCTION dhgq.hold_for_budget_v1(p_source_id uuid, p_stage text, p_job_id text, p_reason text,
                                                   p_delay_seconds integer)
    RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_job_id bigint;
BEGIN
    PERFORM 1 FROM dhgq.audio_processing_stages
     WHERE source_id = p_source_id AND stage = p_stage AND job_id = p_job_id
       AND status IN ('queued', 'processing', 'waiting_budget')
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;  -- cancelled or queued again meanwhile: not this job's to hold
    END IF;
    BEGIN
        SELECT (dhgq.procrastinate_defer_jobs_v1(ARRAY[ROW(
            p_stage, 'dhgq.' || p_stage, dhgq.source_priority_v1(p_source_id),
            p_stage || ':' || p_source_id, p_stage || ':' || p_source_id,
            jsonb_build_object('source_id', p_source_id),
            now() + make_interval(secs => greatest(p_delay_seconds, 1))
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        SELECT id INTO v_job_id FROM dhgq.procrastinate_jobs
         WHERE queueing_lock = p_stage || ':' || p_source_id AND status = 'todo';
    END;
    UPDATE dhgq.audio_processing_stages
       SET status = 'waiting_budget', error = p_reason, error_class = NULL, job_id = v_job_id::text,
           started_at = NULL, completed_at = NULL, progress = 0, progress_detail = NULL
     WHERE source_id = p_source_id AND stage = p_stage;
    RETURN v_job_id;
END;
$$;

-- 3. Paused queues ------------------------------------------------------------------------------------

CREATE TABLE dhgq.queue_pauses (
    queue_name text PRIMARY KEY CHECK (queue_name ~ '^[a-z][a-z0-9_-]{0,63}$'),
    reason text NOT NULL,
    paused_by text,
    paused_at timestamptz NOT NULL DEFAULT now(),
    resume_at timestamptz  -- NULL: until resumed by hand; else the pause is over at this time
);
COMMENT ON TABLE dhgq.queue_pauses IS
    'Paused queues: workers fetch none of their jobs while resume_at is NULL or ahead (dhgq queue pause/resume)';

-- Pause a queue. A pause by hand (p_resume_at NULL) holds until resumed; a timed pause never
-- shortens one by hand, and of two timed pauses the later end wins.
CREATE FUNCTION dhgq.pause_queue_v1(p_queue text, p_reason text, p_by text, p_resume_at timestamptz DEFAULT NULL)
    RETURNS void LANGUAGE sql SECURITY INVOKER SET search_path = '' AS $$
    INSERT INTO dhgq.queue_pauses AS p (queue_name, reason, paused_by, resume_at)
    VALUES (p_queue, p_reason, p_by, p_resume_at)
    ON CONFLICT (queue_name) DO UPDATE
        SET reason = EXCLUDED.reason, paused_by = EXCLUDED.paused_by, paused_at = now(),
            resume_at = CASE WHEN EXCLUDED.resume_at IS NULL THEN NULL
                             WHEN p.resume_at > now() THEN greatest(p.resume_at, EXCLUDED.resume_at)
                             ELSE EXCLUDED.resume_at END
        WHERE NOT (p.resume_at IS NULL AND EXCLUDED.resume_at IS NOT NULL)
$$;

-- Resume a queue, and wake its idle workers now (Procrastinate's channels) rather than at their next poll.
CREATE FUNCTION dhgq.resume_queue_v1(p_queue text) RETURNS boolean
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_payload text := json_build_object('type', 'job_inserted', 'job_id', NULL)::text;
BEGIN
    DELETE FROM dhgq.queue_pauses WHERE queue_name = p_queue;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('procrastinate_queue_v1#' || p_queue, v_payload),
            pg_notify('procrastinate_any_queue_v1', v_payload);
    RETURN true;
END;
$$;

-- Procrastinate's fetch, less the paused queues: dhgq workers fetch through this (dhgq/queues.py).
-- A worker for every queue (p_queues NULL: Procrastinate's own `procrastinate worker`) is not paused.
CREATE FUNCTION dhgq.fetch_job_v1(p_queues character varying[], p_worker_id bigint)
    RETURNS dhgq.procrastinate_jobs LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_open character varying[];
    v_none dhgq.procrastinate_jobs;
BEGIN
    IF p_queues IS NULL THEN
        RETURN dhgq.procrastinate_fetch_job_v2(NULL, p_worker_id);
    END IF;
    v_open := ARRAY(SELECT q FROM unnest(p_queues) AS q
                     WHERE NOT EXISTS (SELECT 1 FROM dhgq.queue_pauses p
                                        WHERE p.queue_name = q AND (p.resume_at IS NULL OR p.resume_at > now())));
    IF cardinality(v_open) = 0 THEN
        RETURN v_none;  -- every asked queue is paused: no job, as when none is ready
    END IF;
    RETURN dhgq.procrastinate_fetch_job_v2(v_open, p_worker_id);
END;
$$;

REVOKE ALL ON TABLE dhgq.queue_pauses FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON FUNCTION dhgq.request_options_v1(jsonb), dhgq.source_priority_v1(uuid),
    dhgq.enqueue_stage_v1(uuid, text, integer),
    dhgq.hold_stage_v1(uuid, text, text, text, text, timestamptz),
    dhgq.hold_for_budget_v1(uuid, text, text, text, integer),
    dhgq.pause_queue_v1(text, text, text, timestamptz), dhgq.resume_queue_v1(text),
    dhgq.fetch_job_v1(character varying[], bigint)
    FROM PUBLIC, anon, authenticated, service_role;
