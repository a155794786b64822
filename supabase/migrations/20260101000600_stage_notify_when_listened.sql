-- The stage trigger's NOTIFY only while someone listens.
--
-- A transaction that has sent a NOTIFY takes a server-wide lock as it commits and holds it until
-- its commit record is flushed, so every such commit waits for the one before it. The stage
-- trigger fires on each claim, progress update and completion: with nobody listening (a batch
-- of 1,000 talks worked off overnight) those NOTIFYs cost about a sixth of the queue's
-- throughput and reach no one. Listeners (the monitor, `dhgq process --wait`, a psql session)
-- now say so by calling dhgq_listen_stages_v1(), which also LISTENs, and call it again at least
-- every 30 seconds; the trigger notifies while any registration is that fresh.

CREATE UNLOGGED TABLE public.dhgq_stage_listeners (
    backend_pid integer PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE public.dhgq_stage_listeners IS
    'Sessions listening on dhgq_stages (written by dhgq_listen_stages_v1); the stage trigger notifies while one is fresh';
ALTER TABLE public.dhgq_stage_listeners ENABLE ROW LEVEL SECURITY;  -- reached through the functions only
REVOKE ALL ON public.dhgq_stage_listeners FROM PUBLIC, anon, authenticated;

CREATE FUNCTION public.dhgq_listen_stages_v1() RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
BEGIN
    LISTEN dhgq_stages;
    INSERT INTO dhgq_stage_listeners (backend_pid, seen_at) VALUES (pg_backend_pid(), clock_timestamp())
    ON CONFLICT (backend_pid) DO UPDATE SET seen_at = EXCLUDED.seen_at;
    DELETE FROM dhgq_stage_listeners WHERE seen_at < clock_timestamp() - interval '10 minutes';
END;
$$;
COMMENT ON FUNCTION public.dhgq_listen_stages_v1() IS
    'LISTEN dhgq_stages and ask the stage trigger to notify; call again at least every 30 s';

CREATE FUNCTION public.dhgq_unlisten_stages_v1() RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
BEGIN
    UNLISTEN dhgq_stages;
    DELETE FROM dhgq_stage_listeners WHERE backend_pid = pg_backend_pid();
END;
$$;

REVOKE ALL ON FUNCTION public.dhgq_listen_stages_v1(), public.dhgq_unlisten_stages_v1() FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.dhgq_listen_stages_v1(), public.dhgq_unlisten_stages_v1()
    TO authenticated, service_role;

CREATE OR REPLACE FUNCTION public.dhgq_stage_changed_v1() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
DECLARE
    v_status text;
BEGIN
    IF EXISTS (SELECT 1 FROM dhgq_stage_listeners WHERE seen_at > now() - interval '30 seconds') THEN
        PERFORM pg_notify('dhgq_stages', json_build_object(
            'source_id', NEW.source_id, 'stage', NEW.stage, 'status', NEW.status,
            'progress', NEW.progress)::text);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.error IS NOT DISTINCT FROM NEW.error THEN
        RETURN NULL;  -- progress only
    END IF;
    IF NOT EXISTS (SELECT 1 FROM processing_jobs WHERE source_id = NEW.source_id) THEN
        RETURN NULL;  -- no user's request follows this source
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
