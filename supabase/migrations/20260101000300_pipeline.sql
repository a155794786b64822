-- The pipeline in SQL: stage rows that track Procrastinate jobs, the functions that queue a stage
-- (used alike by triggers, psql users, supabase-py and the dhgq CLI), and the triggers that start
-- work when a source or a user's request is inserted.

ALTER TABLE public.audio_processing_stages
    ADD COLUMN error_class text CHECK (error_class IN ('transient', 'permanent', 'cancelled')),
    ADD COLUMN progress numeric NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    ADD CONSTRAINT audio_processing_stages_source_stage_key UNIQUE (source_id, stage);

ALTER TABLE public.sources_google
    ADD COLUMN reprocess_requested boolean NOT NULL DEFAULT false;

CREATE FUNCTION public.dhgq_is_media_v1(mime_type text) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(mime_type LIKE 'audio/%' OR mime_type LIKE 'video/%', false)
$$;

CREATE FUNCTION public.dhgq_guess_mime_type_v1(path text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE lower(substring(path FROM '\.([A-Za-z0-9]+)$'))
        WHEN 'mp4' THEN 'video/mp4' WHEN 'm4v' THEN 'video/mp4' WHEN 'mov' THEN 'video/quicktime'
        WHEN 'mkv' THEN 'video/x-matroska' WHEN 'webm' THEN 'video/webm' WHEN 'avi' THEN 'video/x-msvideo'
        WHEN 'm4a' THEN 'audio/mp4' WHEN 'mp3' THEN 'audio/mpeg' WHEN 'wav' THEN 'audio/wav'
        WHEN 'flac' THEN 'audio/flac' WHEN 'ogg' THEN 'audio/ogg' WHEN 'opus' THEN 'audio/opus'
        ELSE 'application/octet-stream' END
$$;

-- Queue one stage of one source: the Procrastinate job and the 'queued' stage row, together.
-- Returns the job id, or NULL when an identical job is already waiting (its queueing lock).
CREATE FUNCTION public.dhgq_enqueue_stage_v1(p_source_id uuid, p_stage text, p_delay_seconds integer DEFAULT 0)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_job_id bigint;
BEGIN
    IF p_stage NOT IN ('extraction', 'transcription', 'diarization', 'summarization') THEN
        RAISE EXCEPTION 'unknown stage %', p_stage USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(
            p_stage, 'dhgq.' || p_stage, 0,
            p_stage || ':' || p_source_id, p_stage || ':' || p_source_id,
            jsonb_build_object('source_id', p_source_id),
            CASE WHEN p_delay_seconds > 0 THEN now() + make_interval(secs => p_delay_seconds) END
        )::procrastinate_job_to_defer_v1]))[1] INTO v_job_id;
    EXCEPTION WHEN unique_violation THEN
        RETURN NULL;  -- the same stage is already queued for this source
    END;
    INSERT INTO audio_processing_stages AS s (source_id, stage, status, job_id, queue_name, attempts, progress)
    VALUES (p_source_id, p_stage, 'queued', v_job_id::text, p_stage, 0, 0)
    ON CONFLICT (source_id, stage) DO UPDATE
        SET status = 'queued', job_id = EXCLUDED.job_id, queue_name = EXCLUDED.queue_name,
            started_at = NULL, completed_at = NULL, error = NULL, error_class = NULL,
            attempts = 0, progress = 0, result = NULL;
    RETURN v_job_id;
END;
$$;

-- Start a source's pipeline from the top, unless one is in flight (then a no-op returning NULL).
CREATE FUNCTION public.dhgq_start_pipeline_v1(p_source_id uuid)
    RETURNS bigint
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM sources_google WHERE id = p_source_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source %', p_source_id USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM audio_processing_stages
               WHERE source_id = p_source_id AND status IN ('queued', 'processing')) THEN
        RETURN NULL;
    END IF;
    DELETE FROM audio_processing_stages WHERE source_id = p_source_id AND stage <> 'extraction';
    RETURN dhgq_enqueue_stage_v1(p_source_id, 'extraction');
END;
$$;

-- Resume a source from its failed stages (not from scratch). Returns the number of stages queued.
CREATE FUNCTION public.dhgq_retry_source_v1(p_source_id uuid)
    RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_stage text;
    v_count integer := 0;
BEGIN
    PERFORM 1 FROM sources_google WHERE id = p_source_id FOR UPDATE;
    FOR v_stage IN SELECT stage FROM audio_processing_stages
                   WHERE source_id = p_source_id AND status = 'failed' ORDER BY created_at LOOP
        IF dhgq_enqueue_stage_v1(p_source_id, v_stage) IS NOT NULL THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- Cancel what is queued or running for a source: waiting jobs are cancelled, running ones are
-- asked to abort, and their stage rows say so.
CREATE FUNCTION public.dhgq_cancel_source_v1(p_source_id uuid)
    RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_row record;
    v_count integer := 0;
BEGIN
    FOR v_row IN SELECT s.id, s.job_id, j.status AS job_status
                 FROM audio_processing_stages s
                 LEFT JOIN procrastinate_jobs j ON j.id = s.job_id::bigint
                 WHERE s.source_id = p_source_id AND s.status IN ('queued', 'processing')
                 FOR UPDATE OF s LOOP
        IF v_row.job_status = 'todo' THEN
            PERFORM procrastinate_cancel_job_v1(v_row.job_id::bigint, false, false);
        ELSIF v_row.job_status = 'doing' THEN
            PERFORM procrastinate_cancel_job_v1(v_row.job_id::bigint, true, false);
        END IF;
        UPDATE audio_processing_stages
            SET status = 'failed', error = 'cancelled by request', error_class = 'cancelled',
                completed_at = now()
            WHERE id = v_row.id;
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- Triggers that start work: a new media source, or an explicit reprocess flag.
CREATE FUNCTION public.dhgq_sources_start_v1() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF dhgq_is_media_v1(NEW.mime_type) AND NOT NEW.is_deleted THEN
            PERFORM dhgq_start_pipeline_v1(NEW.id);
        END IF;
        RETURN NULL;
    END IF;
    -- BEFORE UPDATE OF reprocess_requested: consume the flag and start again
    IF NEW.reprocess_requested THEN
        NEW.reprocess_requested := false;
        IF dhgq_is_media_v1(NEW.mime_type) THEN
            PERFORM dhgq_start_pipeline_v1(NEW.id);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER sources_google_start_pipeline
    AFTER INSERT ON public.sources_google
    FOR EACH ROW EXECUTE FUNCTION public.dhgq_sources_start_v1();

CREATE TRIGGER sources_google_reprocess
    BEFORE UPDATE OF reprocess_requested ON public.sources_google
    FOR EACH ROW WHEN (NEW.reprocess_requested) EXECUTE FUNCTION public.dhgq_sources_start_v1();

-- A user's request (Supabase REST): find or create the source for the file and start its pipeline.
CREATE FUNCTION public.dhgq_processing_jobs_start_v1() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_source_id uuid;
    v_job_id bigint;
BEGIN
    SELECT id INTO v_source_id FROM sources_google
        WHERE path = NEW.file_path AND NOT is_deleted ORDER BY created_at LIMIT 1;
    IF v_source_id IS NULL THEN
        INSERT INTO sources_google (name, path, mime_type, metadata)
        VALUES (substring(NEW.file_path FROM '[^/]+$'), NEW.file_path,
                coalesce(NEW.options ->> 'mime_type', dhgq_guess_mime_type_v1(NEW.file_path)),
                jsonb_build_object('requested_by', NEW.user_id, 'options', NEW.options))
        RETURNING id INTO v_source_id;
        IF NOT EXISTS (SELECT 1 FROM audio_processing_stages WHERE source_id = v_source_id) THEN
            PERFORM dhgq_start_pipeline_v1(v_source_id);  -- not a media type: extraction says why
        END IF;
    ELSE
        PERFORM dhgq_start_pipeline_v1(v_source_id);
    END IF;
    NEW.source_id := v_source_id;
    SELECT job_id INTO NEW.job_id FROM audio_processing_stages
        WHERE source_id = v_source_id AND stage = 'extraction';
    NEW.status := 'queued';
    RETURN NEW;
END;
$$;

CREATE TRIGGER processing_jobs_start_pipeline
    BEFORE INSERT ON public.processing_jobs
    FOR EACH ROW EXECUTE FUNCTION public.dhgq_processing_jobs_start_v1();

-- Every stage change: tell listeners (the monitor), and let users' request rows follow.
CREATE FUNCTION public.dhgq_stage_changed_v1() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_status text;
BEGIN
    PERFORM pg_notify('dhgq_stages', json_build_object(
        'source_id', NEW.source_id, 'stage', NEW.stage, 'status', NEW.status,
        'progress', NEW.progress)::text);
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.error IS NOT DISTINCT FROM NEW.error THEN
        RETURN NULL;  -- progress only
    END IF;
    SELECT CASE
        WHEN bool_or(status = 'failed') THEN 'failed'
        WHEN bool_or(stage = 'summarization' AND status = 'completed') THEN 'completed'
        WHEN bool_or(status = 'processing') OR bool_or(status = 'completed') THEN 'processing'
        ELSE 'queued' END
      INTO v_status
      FROM audio_processing_stages WHERE source_id = NEW.source_id;
    UPDATE processing_jobs p SET
        status = v_status,
        error = CASE WHEN v_status = 'failed' THEN
                    (SELECT string_agg(stage || ': ' || error, '; ') FROM audio_processing_stages
                     WHERE source_id = NEW.source_id AND status = 'failed') END,
        completed_at = CASE WHEN v_status IN ('completed', 'failed') THEN now() END,
        result = CASE WHEN v_status = 'completed' THEN
                    (SELECT jsonb_build_object('source_id', NEW.source_id,
                        'documents', jsonb_object_agg(content_type, id))
                     FROM expert_documents WHERE source_id = NEW.source_id) END
    WHERE p.source_id = NEW.source_id AND p.status IS DISTINCT FROM v_status;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audio_processing_stages_changed
    AFTER INSERT OR UPDATE ON public.audio_processing_stages
    FOR EACH ROW EXECUTE FUNCTION public.dhgq_stage_changed_v1();
