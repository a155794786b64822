-- The stage-change trigger runs on every stage-row write (claims, completions, progress): skip the
-- status aggregate and the UPDATE of users' request rows for sources that no request points at,
-- which is most of them (sources added by psql, the CLI or a Drive sync).

CREATE OR REPLACE FUNCTION public.dhgq_stage_changed_v1() RETURNS trigger
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
