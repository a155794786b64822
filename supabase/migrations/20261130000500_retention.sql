-- Retention: a retry after `dhgq gc` removed a source's extracted audio.
--
-- `dhgq gc` (and the worker's daily dhgq.gc task) removes the derived audio of sources whose
-- pipeline finished, completed or failed, more than DHGQ_KEEP_AUDIO_DAYS ago, and clears
-- sources_google.audio_extraction_path (and audio_extracted) when it does. A reprocess starts
-- from extraction anyway; a retry resumes at the failed stages, and transcription and
-- diarization need that audio. So a retry of a source whose audio is gone, with one of those
-- stages failed, starts the pipeline again from extraction (as start_pipeline_v1 does: the
-- later stage rows go, extraction is queued) instead of handing a model stage a missing file.
-- A failed summarization needs no audio and is retried as before. Stage rows are never
-- rewritten by gc itself: the dead letter keeps the real reason until the retry.

CREATE OR REPLACE FUNCTION dhgq.retry_source_v1(p_source_id uuid)
    RETURNS integer LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_stage text;
    v_count integer := 0;
BEGIN
    PERFORM 1 FROM public.sources_google WHERE id = p_source_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM public.sources_google WHERE id = p_source_id AND audio_extraction_path IS NULL)
       AND EXISTS (SELECT 1 FROM dhgq.audio_processing_stages
                   WHERE source_id = p_source_id AND status = 'failed'
                     AND stage IN ('transcription', 'diarization')) THEN
        -- the extracted audio was removed (dhgq gc): extract it again, then run the rest
        RETURN CASE WHEN dhgq.start_pipeline_v1(p_source_id) IS NULL THEN 0 ELSE 1 END;
    END IF;
    FOR v_stage IN SELECT stage FROM dhgq.audio_processing_stages
                   WHERE source_id = p_source_id AND status = 'failed' ORDER BY created_at LOOP
        IF dhgq.enqueue_stage_v1(p_source_id, v_stage) IS NOT NULL THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

REVOKE ALL ON FUNCTION dhgq.retry_source_v1(uuid) FROM PUBLIC, anon, authenticated, service_role;
