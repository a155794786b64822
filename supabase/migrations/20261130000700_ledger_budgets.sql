-- What the pipeline spends, and caps on it.
--
-- The ledger (dhgq.ledger) has one row per paid call: a Claude request of a summary, or a Modal
-- GPU call of transcription or diarization. The worker writes the row before the call
-- ('started') and completes it after ('succeeded' with the answer, tokens, seconds and cost, or
-- 'failed'). A summary that is retried or resumed asks the ledger first: a request whose
-- fingerprint (sha256 of the canonical request) already succeeded for the source is answered
-- from its row, and not sent again. Costs are priced by the worker (DHGQ_LLM_PRICES,
-- DHGQ_GPU_PRICES) when the call ends, so a later change of prices does not rewrite history.
--
-- dhgq.costs shows every stage row with what it cost: wall, CPU and GPU seconds, GPU type,
-- tokens and dollars. Totals per source, batch or day are `dhgq cost`.
--
-- Budgets: optional caps in dollars per day (UTC) and per batch, rows of dhgq.config
-- (budget_daily_usd, budget_batch_usd; JSON null is no cap), read by every check, so a change
-- applies without restarting workers. Before a paid stage starts, the worker adds what the day
-- and the source's batch have spent to an estimate of the stage; over a cap, the stage does not
-- start: its row says 'waiting_budget' with the reason in `error`, and a job checks again
-- DHGQ_BUDGET_RECHECK_SECONDS later (so a new day frees it). Changing a cap re-queues every
-- waiting stage at once (the trigger below); each checks the budget again when it runs.

CREATE TABLE dhgq.ledger (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('llm', 'gpu')),
    provider text NOT NULL,                -- anthropic, modal
    model text NOT NULL,                   -- the model asked for (llm), the function and model (gpu)
    fingerprint text NOT NULL,             -- sha256 (hex) of the canonical request
    source_id uuid REFERENCES public.sources_google(id) ON DELETE SET NULL,  -- spend outlives its source
    stage text CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    batch_id uuid REFERENCES public.processing_batches(id) ON DELETE SET NULL,
    job_id bigint,                         -- the Procrastinate job, when the caller knows it
    status text NOT NULL DEFAULT 'started' CHECK (status IN ('started', 'succeeded', 'failed')),
    request jsonb NOT NULL DEFAULT '{}'::jsonb,   -- what the call was (kind of prompt, part, sizes), not its text
    answer jsonb,                          -- what reusing the call needs (llm: text, model, usage)
    response_model text,
    input_tokens integer CHECK (input_tokens >= 0),
    output_tokens integer CHECK (output_tokens >= 0),
    gpu_type text,
    gpu_seconds numeric CHECK (gpu_seconds >= 0),
    latency_s numeric CHECK (latency_s >= 0),
    estimated_cost_usd numeric CHECK (estimated_cost_usd >= 0),  -- counted against budgets while started
    cost_usd numeric CHECK (cost_usd >= 0),
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
COMMENT ON TABLE dhgq.ledger IS
    'One row per paid call (Claude request, Modal GPU call): recorded before and after it is made, '
    'with tokens, GPU seconds, latency and cost; succeeded Claude answers are reused by a retried summary';
CREATE INDEX idx_ledger_source_fingerprint ON dhgq.ledger(source_id, fingerprint);
CREATE INDEX idx_ledger_source_stage ON dhgq.ledger(source_id, stage);
CREATE INDEX idx_ledger_batch_id ON dhgq.ledger(batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX idx_ledger_created_at ON dhgq.ledger(created_at);

-- A stage that may not start for lack of budget waits, visibly.
ALTER TABLE dhgq.audio_processing_stages
    DROP CONSTRAINT audio_processing_stages_status_check,
    ADD CONSTRAINT audio_processing_stages_status_check
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'waiting_budget'));

-- The caps, JSON null meaning none; only a non-negative number or null is a cap.
INSERT INTO dhgq.config (key, value, description) VALUES
    ('budget_daily_usd', 'null',
     'Most dollars paid calls (Claude, Modal GPU) may cost per UTC day; null: no cap (dhgq budget set --daily)'),
    ('budget_batch_usd', 'null',
     'Most dollars the paid calls of one batch may cost; null: no cap (dhgq budget set --batch)')
ON CONFLICT (key) DO NOTHING;
ALTER TABLE dhgq.config ADD CONSTRAINT config_budget_is_a_cap
    CHECK (key NOT IN ('budget_daily_usd', 'budget_batch_usd')
           OR jsonb_typeof(value) = 'null'
           OR (jsonb_typeof(value) = 'number' AND (value #>> '{}')::numeric >= 0));

-- A stage over budget: its row waits, with the reason, and a job checks again in p_delay_seconds.
-- Called by the stage's own job (p_job_id) while the row is still its own; returns the new job.
CREATE FUNCTION dhgq.hold_for_budget_v1(p_source_id uuid, p_stage text, p_job_id text, p_reason text,
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
            p_stage, 'dhgq.' || p_stage, 0,
            p_stage || ':' || p_source_id, p_stage || ':' || p_source_id,
            jsonb_build_object('source_id', p_source_id),
            now() + make_interval(secs => greatest(p_delay_seconds, 1))
        )::dhgq.procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        -- a job for this stage waits already (its queueing lock): that one checks again
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

-- Re-queue every stage waiting for budget now (each checks the budget again when it runs): its
-- delayed check is cancelled, so that the queueing lock lets the new job in. The exclusive budget
-- lock waits for checks in progress, whose holds this then sees (they take it shared).
CREATE FUNCTION dhgq.resume_waiting_budget_v1() RETURNS integer
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_row record;
    v_count integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('dhgq.budget', 0));
    FOR v_row IN SELECT source_id, stage, job_id FROM dhgq.audio_processing_stages
                  WHERE status = 'waiting_budget' ORDER BY updated_at
                    FOR UPDATE LOOP
        IF v_row.job_id IS NOT NULL THEN
            PERFORM dhgq.procrastinate_cancel_job_v1(v_row.job_id::bigint, false, false);
        END IF;
        IF dhgq.enqueue_stage_v1(v_row.source_id, v_row.stage) IS NOT NULL THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

CREATE FUNCTION dhgq.config_budget_changed_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
BEGIN
    PERFORM dhgq.resume_waiting_budget_v1();
    RETURN NULL;
END;
$$;

CREATE TRIGGER config_budget_changed
    AFTER INSERT OR UPDATE ON dhgq.config
    FOR EACH ROW WHEN (NEW.key IN ('budget_daily_usd', 'budget_batch_usd'))
    EXECUTE FUNCTION dhgq.config_budget_changed_v1();
CREATE TRIGGER config_budget_removed
    AFTER DELETE ON dhgq.config
    FOR EACH ROW WHEN (OLD.key IN ('budget_daily_usd', 'budget_batch_usd'))
    EXECUTE FUNCTION dhgq.config_budget_changed_v1();

-- A stage waiting for budget is in flight: a second start, or a user's request for the same file,
-- follows it instead of starting over; a cancel cancels its waiting check.
CREATE OR REPLACE FUNCTION dhgq.start_pipeline_v1(p_source_id uuid)
    RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
BEGIN
    PERFORM 1 FROM public.sources_google WHERE id = p_source_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source %', p_source_id USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM dhgq.audio_processing_stages
               WHERE source_id = p_source_id AND status IN ('queued', 'processing', 'waiting_budget')) THEN
        RETURN NULL;
    END IF;
    DELETE FROM dhgq.audio_processing_stages WHERE source_id = p_source_id AND stage <> 'extraction';
    RETURN dhgq.enqueue_stage_v1(p_source_id, 'extraction');
END;
$$;

CREATE OR REPLACE FUNCTION dhgq.cancel_source_v1(p_source_id uuid)
    RETURNS integer LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_row record;
    v_count integer := 0;
BEGIN
    FOR v_row IN SELECT s.id, s.job_id, j.status AS job_status
                 FROM dhgq.audio_processing_stages s
                 LEFT JOIN dhgq.procrastinate_jobs j ON j.id = s.job_id::bigint
                 WHERE s.source_id = p_source_id AND s.status IN ('queued', 'processing', 'waiting_budget')
                 FOR UPDATE OF s LOOP
        IF v_row.job_status = 'todo' THEN
            PERFORM dhgq.procrastinate_cancel_job_v1(v_row.job_id::bigint, false, false);
        ELSIF v_row.job_status = 'doing' THEN
            PERFORM dhgq.procrastinate_cancel_job_v1(v_row.job_id::bigint, true, false);
        END IF;
        UPDATE dhgq.audio_processing_stages
            SET status = 'failed', error = 'cancelled by request', error_class = 'cancelled',
                completed_at = now()
            WHERE id = v_row.id;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- A request whose source waits for budget is still processing (its earlier stages completed).
CREATE OR REPLACE FUNCTION dhgq.request_status_v1(p_source_id uuid) RETURNS text
    LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT CASE
        WHEN bool_or(status = 'failed' AND error_class = 'cancelled') THEN 'cancelled'
        WHEN bool_or(status = 'failed') THEN 'failed'
        WHEN bool_or(stage = 'summarization' AND status = 'completed') THEN 'completed'
        WHEN bool_or(status IN ('processing', 'waiting_budget')) OR bool_or(status = 'completed') THEN 'processing'
        ELSE 'queued' END
      FROM dhgq.audio_processing_stages WHERE source_id = p_source_id
$$;

-- As in 20261130000200_user_access, with 'waiting_budget' counted as in flight.
CREATE OR REPLACE FUNCTION dhgq.processing_jobs_start_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_role text := coalesce(nullif(current_setting('role', true), ''), 'none');
    v_trusted boolean;
    v_path text;
    v_source_id uuid;
BEGIN
    v_trusted := v_role = 'none' OR pg_has_role(v_role, 'service_role', 'MEMBER');
    IF NEW.user_id IS NULL THEN
        RAISE EXCEPTION 'a request belongs to a user: sign in, or give user_id'
            USING ERRCODE = 'not_null_violation';
    END IF;
    -- what only the pipeline writes
    NEW.status := 'queued';
    NEW.result := NULL;
    NEW.error := NULL;
    NEW.completed_at := NULL;
    NEW.cancel_requested := false;
    NEW.retry_requested := false;
    NEW.options := dhgq.request_options_v1(NEW.options);
    IF v_trusted AND (NEW.file_path LIKE '/%' OR NEW.file_path ~ '^[a-z][a-z0-9+.-]*://') THEN
        v_path := NEW.file_path;  -- a local path or a URI, from the CLI or the service role
    ELSE
        v_path := dhgq.user_object_uri_v1(NEW.user_id, NEW.file_path);
    END IF;

    SELECT id INTO v_source_id FROM public.sources_google
     WHERE path = v_path AND owner_id = NEW.user_id AND NOT is_deleted
     ORDER BY created_at LIMIT 1
       FOR UPDATE;
    IF v_source_id IS NULL THEN
        INSERT INTO public.sources_google (name, path, mime_type, owner_id, options, metadata)
        VALUES (substring(v_path FROM '[^/]+$'), v_path, dhgq.guess_mime_type_v1(v_path), NEW.user_id,
                NEW.options, jsonb_build_object('requested_by', NEW.user_id))
        RETURNING id INTO v_source_id;
        IF NOT EXISTS (SELECT 1 FROM dhgq.audio_processing_stages WHERE source_id = v_source_id) THEN
            PERFORM dhgq.start_pipeline_v1(v_source_id);  -- not a media type: extraction says why
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM dhgq.audio_processing_stages
                      WHERE source_id = v_source_id AND status IN ('queued', 'processing', 'waiting_budget')) THEN
        UPDATE public.sources_google SET options = NEW.options WHERE id = v_source_id;
        PERFORM dhgq.start_pipeline_v1(v_source_id);
    END IF;  -- else a run is in flight: this request follows it
    NEW.source_id := v_source_id;
    NEW.status := dhgq.request_status_v1(v_source_id);
    SELECT job_id INTO NEW.job_id FROM dhgq.audio_processing_stages
     WHERE source_id = v_source_id AND stage = 'extraction';
    RETURN NEW;
END;
$$;

-- The operator views: a source whose stages wait for budget says so; the counts get a column.
CREATE OR REPLACE VIEW dhgq.pipeline_stage_counts AS
SELECT stage.name AS stage,
       count(*) FILTER (WHERE s.status = 'queued') AS queued,
       count(*) FILTER (WHERE s.status = 'processing') AS processing,
       count(*) FILTER (WHERE s.status = 'completed') AS completed,
       count(*) FILTER (WHERE s.status = 'failed') AS failed,
       count(*) FILTER (WHERE s.status = 'completed' AND s.completed_at > now() - interval '5 minutes')
           AS completed_last_5_min,
       count(*) FILTER (WHERE s.status = 'waiting_budget') AS waiting_budget
FROM (VALUES (1, 'extraction'), (2, 'transcription'), (3, 'diarization'), (4, 'summarization'))
     AS stage(position, name)
LEFT JOIN dhgq.audio_processing_stages s ON s.stage = stage.name
GROUP BY stage.position, stage.name
ORDER BY stage.position;

CREATE OR REPLACE VIEW dhgq.pipeline_status AS
SELECT src.id AS source_id,
       src.name,
       src.path,
       src.audio_duration_seconds,
       max(st.status) FILTER (WHERE st.stage = 'extraction') AS extraction,
       max(st.status) FILTER (WHERE st.stage = 'transcription') AS transcription,
       max(st.status) FILTER (WHERE st.stage = 'diarization') AS diarization,
       max(st.status) FILTER (WHERE st.stage = 'summarization') AS summarization,
       CASE
           WHEN count(st.id) = 0 THEN 'not started'
           WHEN bool_or(st.status = 'failed') THEN 'failed'
           WHEN bool_or(st.stage = 'summarization' AND st.status = 'completed') THEN 'completed'
           WHEN bool_or(st.status = 'processing') THEN 'processing'
           WHEN bool_or(st.status = 'waiting_budget') THEN 'waiting_budget'
           ELSE 'queued'
       END AS state,
       round(coalesce(sum(CASE WHEN st.status = 'completed' THEN 100 ELSE st.progress END), 0) / 4, 1)
           AS progress,
       string_agg(st.stage || ': ' || st.error, '; ') FILTER (WHERE st.status = 'failed') AS error,
       src.created_at,
       greatest(src.updated_at, max(st.updated_at)) AS updated_at
FROM public.sources_google src
LEFT JOIN dhgq.audio_processing_stages st ON st.source_id = src.id
WHERE NOT src.is_deleted
GROUP BY src.id;

-- Every stage row with what it cost. Seconds: wall (the stage's own, from claim to commit), CPU
-- (the worker thread's, where the stage records it), GPU (Modal's remote seconds). Tokens and
-- dollars: the ledger's calls for the source and stage, every run of it counted.
CREATE VIEW dhgq.costs AS
SELECT st.id AS stage_id,
       st.source_id,
       src.name AS source_name,
       src.owner_id,
       src.batch_id,
       b.name AS batch_name,
       st.stage,
       st.status,
       st.started_at,
       st.completed_at,
       coalesce((st.result ->> 'stage_seconds')::numeric,
                extract(epoch FROM st.completed_at - st.started_at)::numeric) AS wall_seconds,
       (st.result ->> 'cpu_seconds')::numeric AS cpu_seconds,
       coalesce(l.gpu_seconds,
                CASE WHEN st.result ->> 'backend' = 'modal' THEN (st.result ->> 'remote_s')::numeric END)
           AS gpu_seconds,
       coalesce(l.gpu_type, CASE WHEN st.result ->> 'backend' = 'modal' THEN st.result ->> 'gpu' END) AS gpu_type,
       coalesce(l.calls, 0) AS paid_calls,
       coalesce(l.input_tokens, 0) AS input_tokens,
       coalesce(l.output_tokens, 0) AS output_tokens,
       coalesce(l.cost_usd, 0) AS cost_usd
FROM dhgq.audio_processing_stages st
JOIN public.sources_google src ON src.id = st.source_id
LEFT JOIN public.processing_batches b ON b.id = src.batch_id
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE x.status = 'succeeded') AS calls,
           sum(x.input_tokens) AS input_tokens,
           sum(x.output_tokens) AS output_tokens,
           sum(x.gpu_seconds) AS gpu_seconds,
           max(x.gpu_type) AS gpu_type,
           sum(x.cost_usd) AS cost_usd
      FROM dhgq.ledger x
     WHERE x.source_id = st.source_id AND x.stage = st.stage
) l ON true;
COMMENT ON VIEW dhgq.costs IS
    'Per stage row: source, owner, batch, stage, wall/CPU/GPU seconds, GPU type, tokens and cost in USD';

-- As for everything in dhgq: nobody but the owner runs or reads it.
REVOKE ALL ON TABLE dhgq.ledger, dhgq.costs FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON FUNCTION dhgq.hold_for_budget_v1(uuid, text, text, text, integer), dhgq.resume_waiting_budget_v1(),
    dhgq.config_budget_changed_v1(), dhgq.start_pipeline_v1(uuid), dhgq.cancel_source_v1(uuid),
    dhgq.request_status_v1(uuid), dhgq.processing_jobs_start_v1()
    FROM PUBLIC, anon, authenticated, service_role;
