-- The pipeline's internals leave the Data API.
--
-- Supabase's PostgREST serves schema `public` over HTTP, and Supabase grants whatever the project
-- role creates there to anon and authenticated. Procrastinate's queue and dhgq's stage machinery
-- (stage rows, listeners, components, the functions that queue and cancel work) now live in
-- schema `dhgq`, which PostgREST does not expose and on which no API role has any right: the
-- same reason Supabase keeps its own queue (pgmq) in a schema of its own.
--
-- The worker and the CLI reach it through their connection's search_path (`dhgq, public`, set
-- by dhgq.db for every connection, as Procrastinate documents for a schema of one's own); psql
-- users name it: dhgq.pipeline_status, dhgq.dead_letter, dhgq.procrastinate_jobs, ...
--
-- Every function in `dhgq` pins its search_path, and nobody but the owner (the project role
-- that runs the migrations and the workers) may execute it. Functions keep their names and
-- OIDs (triggers follow them) but drop the `dhgq_` prefix that the schema now says.

CREATE SCHEMA IF NOT EXISTS dhgq;
COMMENT ON SCHEMA dhgq IS 'dhgq''s queue and stage machinery (Procrastinate included); not exposed through the Data API';
REVOKE ALL ON SCHEMA dhgq FROM PUBLIC;

-- Procrastinate: its types, tables (with their sequences, indexes and triggers) and functions.
ALTER TYPE public.procrastinate_job_status SET SCHEMA dhgq;
ALTER TYPE public.procrastinate_job_event_type SET SCHEMA dhgq;
ALTER TYPE public.procrastinate_job_to_defer_v1 SET SCHEMA dhgq;
ALTER TABLE public.procrastinate_workers SET SCHEMA dhgq;
ALTER TABLE public.procrastinate_jobs SET SCHEMA dhgq;
ALTER TABLE public.procrastinate_periodic_defers SET SCHEMA dhgq;
ALTER TABLE public.procrastinate_events SET SCHEMA dhgq;

DO $$
DECLARE
    v_function regprocedure;
BEGIN
    FOR v_function IN SELECT p.oid::regprocedure FROM pg_proc p
                      WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'procrastinate\_%' LOOP
        EXECUTE format('ALTER FUNCTION %s SET SCHEMA dhgq', v_function);
    END LOOP;
    -- Procrastinate's functions name its objects unqualified: pin them to their new schema.
    FOR v_function IN SELECT p.oid::regprocedure FROM pg_proc p
                      WHERE p.pronamespace = 'dhgq'::regnamespace AND p.proname LIKE 'procrastinate\_%' LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = dhgq, pg_temp', v_function);
    END LOOP;
END
$$;

-- dhgq's machinery: stage rows, listener registrations, component versions, operator views.
ALTER TABLE public.audio_processing_stages SET SCHEMA dhgq;
ALTER TABLE public.dhgq_stage_listeners SET SCHEMA dhgq;
ALTER TABLE dhgq.dhgq_stage_listeners RENAME TO stage_listeners;
ALTER TABLE public.dhgq_components SET SCHEMA dhgq;
ALTER TABLE dhgq.dhgq_components RENAME TO components;
ALTER VIEW public.pipeline_stage_counts SET SCHEMA dhgq;
ALTER VIEW public.pipeline_status SET SCHEMA dhgq;
ALTER VIEW public.dead_letter SET SCHEMA dhgq;

-- A deleted source takes its stage rows with it (its queued jobs then find nothing to do).
ALTER TABLE dhgq.audio_processing_stages
    DROP CONSTRAINT audio_processing_stages_source_id_fkey,
    ADD CONSTRAINT audio_processing_stages_source_id_fkey
        FOREIGN KEY (source_id) REFERENCES public.sources_google(id) ON DELETE CASCADE;

-- Settings the database itself needs (the workers' own settings stay in DHGQ_* variables).
CREATE TABLE dhgq.config (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    description text NOT NULL
);
INSERT INTO dhgq.config (key, value, description) VALUES
    ('storage_bucket', '"media"',
     'Supabase Storage bucket that users'' processing_jobs.file_path keys name'),
    ('whisper_models', '["tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v3", "turbo"]',
     'Whisper models a user may ask for in processing_jobs.options.model'),
    ('max_speakers', '20',
     'Largest speaker count a user may give in processing_jobs.options');

-- Move dhgq's functions (triggers keep pointing at them), then redefine them with qualified
-- names and an empty search_path.
ALTER FUNCTION public.dhgq_touch_updated_at_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_touch_updated_at_v1() RENAME TO touch_updated_at_v1;
ALTER FUNCTION public.dhgq_is_media_v1(text) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_is_media_v1(text) RENAME TO is_media_v1;
ALTER FUNCTION public.dhgq_guess_mime_type_v1(text) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_guess_mime_type_v1(text) RENAME TO guess_mime_type_v1;
ALTER FUNCTION public.dhgq_enqueue_stage_v1(uuid, text, integer) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_enqueue_stage_v1(uuid, text, integer) RENAME TO enqueue_stage_v1;
ALTER FUNCTION public.dhgq_start_pipeline_v1(uuid) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_start_pipeline_v1(uuid) RENAME TO start_pipeline_v1;
ALTER FUNCTION public.dhgq_retry_source_v1(uuid) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_retry_source_v1(uuid) RENAME TO retry_source_v1;
ALTER FUNCTION public.dhgq_cancel_source_v1(uuid) SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_cancel_source_v1(uuid) RENAME TO cancel_source_v1;
ALTER FUNCTION public.dhgq_sources_start_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_sources_start_v1() RENAME TO sources_start_v1;
ALTER FUNCTION public.dhgq_processing_jobs_start_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_processing_jobs_start_v1() RENAME TO processing_jobs_start_v1;
ALTER FUNCTION public.dhgq_stage_changed_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_stage_changed_v1() RENAME TO stage_changed_v1;
ALTER FUNCTION public.dhgq_listen_stages_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_listen_stages_v1() RENAME TO listen_stages_v1;
ALTER FUNCTION public.dhgq_unlisten_stages_v1() SET SCHEMA dhgq;
ALTER FUNCTION dhgq.dhgq_unlisten_stages_v1() RENAME TO unlisten_stages_v1;

CREATE OR REPLACE FUNCTION dhgq.touch_updated_at_v1() RETURNS trigger
    LANGUAGE plpgsql SET search_path = '' AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION dhgq.is_media_v1(mime_type text) RETURNS boolean
    LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT coalesce(mime_type LIKE 'audio/%' OR mime_type LIKE 'video/%', false)
$$;

CREATE OR REPLACE FUNCTION dhgq.guess_mime_type_v1(path text) RETURNS text
    LANGUAGE sql IMMUTABLE SET search_path = '' AS $$
    SELECT CASE lower(substring(path FROM '\.([A-Za-z0-9]+)$'))
        WHEN 'mp4' THEN 'video/mp4' WHEN 'm4v' THEN 'video/mp4' WHEN 'mov' THEN 'video/quicktime'
        WHEN 'mkv' THEN 'video/x-matroska' WHEN 'webm' THEN 'video/webm' WHEN 'avi' THEN 'video/x-msvideo'
        WHEN 'm4a' THEN 'audio/mp4' WHEN 'mp3' THEN 'audio/mpeg' WHEN 'wav' THEN 'audio/wav'
        WHEN 'flac' THEN 'audio/flac' WHEN 'ogg' THEN 'audio/ogg' WHEN 'opus' THEN 'audio/opus'
        ELSE 'application/octet-stream' END
$$;

-- Queue one stage of one source: the Procrastinate job and the 'queued' stage row, together.
-- Returns the job id, or NULL when an identical job is already waiting (its queueing lock).
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
            p_stage, 'dhgq.' || p_stage, 0,
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
            attempts = 0, progress = 0, result = NULL;
    RETURN v_job_id;
END;
$$;

-- Start a source's pipeline from the top, unless one is in flight (then a no-op returning NULL).
CREATE OR REPLACE FUNCTION dhgq.start_pipeline_v1(p_source_id uuid)
    RETURNS bigint LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
BEGIN
    PERFORM 1 FROM public.sources_google WHERE id = p_source_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source %', p_source_id USING ERRCODE = 'no_data_found';
    END IF;
    IF EXISTS (SELECT 1 FROM dhgq.audio_processing_stages
               WHERE source_id = p_source_id AND status IN ('queued', 'processing')) THEN
        RETURN NULL;
    END IF;
    DELETE FROM dhgq.audio_processing_stages WHERE source_id = p_source_id AND stage <> 'extraction';
    RETURN dhgq.enqueue_stage_v1(p_source_id, 'extraction');
END;
$$;

-- Resume a source from its failed (or cancelled) stages, not from scratch. Returns the number queued.
CREATE OR REPLACE FUNCTION dhgq.retry_source_v1(p_source_id uuid)
    RETURNS integer LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_stage text;
    v_count integer := 0;
BEGIN
    PERFORM 1 FROM public.sources_google WHERE id = p_source_id FOR UPDATE;
    FOR v_stage IN SELECT stage FROM dhgq.audio_processing_stages
                   WHERE source_id = p_source_id AND status = 'failed' ORDER BY created_at LOOP
        IF dhgq.enqueue_stage_v1(p_source_id, v_stage) IS NOT NULL THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- Cancel what is queued or running for a source: waiting jobs are cancelled, running ones are
-- asked to abort, and their stage rows say so.
CREATE OR REPLACE FUNCTION dhgq.cancel_source_v1(p_source_id uuid)
    RETURNS integer LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_row record;
    v_count integer := 0;
BEGIN
    FOR v_row IN SELECT s.id, s.job_id, j.status AS job_status
                 FROM dhgq.audio_processing_stages s
                 LEFT JOIN dhgq.procrastinate_jobs j ON j.id = s.job_id::bigint
                 WHERE s.source_id = p_source_id AND s.status IN ('queued', 'processing')
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

-- A new media source, or an explicit reprocess flag, starts the pipeline. SECURITY DEFINER: the
-- service role inserts sources through the Data API and has no rights in schema dhgq.
CREATE OR REPLACE FUNCTION dhgq.sources_start_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF dhgq.is_media_v1(NEW.mime_type) AND NOT NEW.is_deleted THEN
            PERFORM dhgq.start_pipeline_v1(NEW.id);
        END IF;
        RETURN NULL;
    END IF;
    -- BEFORE UPDATE OF reprocess_requested: consume the flag and start again
    IF NEW.reprocess_requested THEN
        NEW.reprocess_requested := false;
        IF dhgq.is_media_v1(NEW.mime_type) THEN
            PERFORM dhgq.start_pipeline_v1(NEW.id);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

-- Sessions that listen on dhgq_stages say so, so that the stage trigger NOTIFYs only then.
CREATE OR REPLACE FUNCTION dhgq.listen_stages_v1() RETURNS void
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
BEGIN
    LISTEN dhgq_stages;
    INSERT INTO dhgq.stage_listeners (backend_pid, seen_at) VALUES (pg_backend_pid(), clock_timestamp())
    ON CONFLICT (backend_pid) DO UPDATE SET seen_at = EXCLUDED.seen_at;
    DELETE FROM dhgq.stage_listeners WHERE seen_at < clock_timestamp() - interval '10 minutes';
END;
$$;

CREATE OR REPLACE FUNCTION dhgq.unlisten_stages_v1() RETURNS void
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
BEGIN
    UNLISTEN dhgq_stages;
    DELETE FROM dhgq.stage_listeners WHERE backend_pid = pg_backend_pid();
END;
$$;

-- The status of the users' requests that follow a source, from its stage rows.
CREATE FUNCTION dhgq.request_status_v1(p_source_id uuid) RETURNS text
    LANGUAGE sql STABLE SET search_path = '' AS $$
    SELECT CASE
        WHEN bool_or(status = 'failed' AND error_class = 'cancelled') THEN 'cancelled'
        WHEN bool_or(status = 'failed') THEN 'failed'
        WHEN bool_or(stage = 'summarization' AND status = 'completed') THEN 'completed'
        WHEN bool_or(status = 'processing') OR bool_or(status = 'completed') THEN 'processing'
        ELSE 'queued' END
      FROM dhgq.audio_processing_stages WHERE source_id = p_source_id
$$;

-- Every stage change: tell listeners (the monitor), and let users' request rows follow.
CREATE OR REPLACE FUNCTION dhgq.stage_changed_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_status text;
BEGIN
    IF EXISTS (SELECT 1 FROM dhgq.stage_listeners WHERE seen_at > now() - interval '30 seconds') THEN
        PERFORM pg_notify('dhgq_stages', json_build_object(
            'source_id', NEW.source_id, 'stage', NEW.stage, 'status', NEW.status,
            'progress', NEW.progress)::text);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.error IS NOT DISTINCT FROM NEW.error THEN
        RETURN NULL;  -- progress only
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.processing_jobs WHERE source_id = NEW.source_id) THEN
        RETURN NULL;  -- no user's request follows this source
    END IF;
    v_status := dhgq.request_status_v1(NEW.source_id);
    UPDATE public.processing_jobs p SET
        status = v_status,
        error = CASE WHEN v_status IN ('failed', 'cancelled') THEN
                    (SELECT string_agg(stage || ': ' || error, '; ') FROM dhgq.audio_processing_stages
                     WHERE source_id = NEW.source_id AND status = 'failed') END,
        completed_at = CASE WHEN v_status IN ('completed', 'failed', 'cancelled') THEN now() END,
        result = CASE WHEN v_status = 'completed' THEN
                    (SELECT jsonb_build_object('source_id', NEW.source_id,
                        'documents', jsonb_object_agg(content_type, id))
                     FROM public.expert_documents WHERE source_id = NEW.source_id) END
    WHERE p.source_id = NEW.source_id AND p.status IS DISTINCT FROM v_status;
    RETURN NULL;
END;
$$;

-- processing_jobs_start_v1, the trigger behind users' requests, is redefined by the next migration
-- (20261130000200_user_access) with the checks on what a user may ask for.

-- Nobody but the owner runs or reads anything here: not PUBLIC (which may execute every new
-- function by default), not the API roles that the earlier migrations or Supabase's default
-- privileges granted to while these objects lived in public.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
