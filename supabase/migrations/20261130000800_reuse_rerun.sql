-- Reuse by content, re-runs of what changed, and the earlier versions of outputs.
--
-- Reuse. Every stage output is recorded in dhgq.stage_outputs under a key: the sha256 of its
-- input's content hash, the stage, the engine and its version, the model and its version, the
-- options that change the output and (summaries) the prompt version (dhgq/pipeline.py ReuseKey).
-- When a stage is claimed, a current output with the same key of another source *of the same
-- owner* (sources_google.owner_id, NULL for the operator's sources) is copied instead of computed:
-- the copies are rows of the new source (its own ids), so row-level security holds as it does for
-- computed rows. Outputs are never reused across owners, not even by copy: a result that came
-- back in a second would tell a user that someone else had processed the same file.
--
-- Staleness. Workers record the versions they would use now in dhgq.current_versions (per stage,
-- engine and model: when a worker process first serves a stage, and with every output it
-- records). dhgq.stale_outputs lists current outputs whose model version or prompt version is
-- not the recorded current one; `dhgq rerun --stale` queues them again.
--
-- Re-runs. dhgq.rerun_v1 queues one stage and what depends on it (extraction: everything;
-- transcription or diarization: itself, the fan-in and summarization; summarization: itself),
-- keeping the outputs upstream of it. An explicit re-run computes (no reuse): dhgq.stage_reruns
-- names its job.
--
-- History. Before a stage's new output replaces its rows, the completing transaction copies them
-- (documents, segments, speakers, the source's audio columns, the stage result) into
-- dhgq.output_history, and the earlier stage_outputs row is marked superseded; `dhgq gc` removes
-- both once they are older than the retention allows. The public tables keep one current
-- version, so the Data API, the SDK and the CLI read exactly what they read before.

CREATE TABLE dhgq.stage_outputs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    stage text NOT NULL CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    key text NOT NULL,
    input_hash text NOT NULL,
    engine text NOT NULL,
    engine_version text,
    model text NOT NULL,
    model_version text,
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    prompt_version text,
    reusable boolean NOT NULL DEFAULT true,
    result jsonb,
    reused_from jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    superseded_at timestamptz
);
COMMENT ON TABLE dhgq.stage_outputs IS
    'Each stage output under its reuse key; one current (superseded_at IS NULL) per source and stage';
COMMENT ON COLUMN dhgq.stage_outputs.key IS
    'sha256 of stage, input_hash, engine, engine_version, model, model_version, options, prompt_version';
COMMENT ON COLUMN dhgq.stage_outputs.reusable IS
    'false: recorded for staleness only, never copied (e.g. a summary whose exports went beside its own source)';
COMMENT ON COLUMN dhgq.stage_outputs.reused_from IS
    'When this output is a copy: the output it was copied from (source_id, stage, stage_id, output_id)';
CREATE UNIQUE INDEX stage_outputs_current ON dhgq.stage_outputs (source_id, stage) WHERE superseded_at IS NULL;
CREATE INDEX stage_outputs_key ON dhgq.stage_outputs (key) WHERE superseded_at IS NULL;
CREATE INDEX stage_outputs_superseded ON dhgq.stage_outputs (superseded_at) WHERE superseded_at IS NOT NULL;

CREATE TABLE dhgq.current_versions (
    stage text NOT NULL CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    engine text NOT NULL,
    model text NOT NULL,
    engine_version text,
    model_version text,
    prompt_version text,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, engine, model)
);
COMMENT ON TABLE dhgq.current_versions IS
    'The versions the workers use now, per stage, engine and model (the latest a worker recorded)';

CREATE TABLE dhgq.stage_reruns (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    stage text NOT NULL CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    job_id bigint,
    fresh boolean NOT NULL,
    reason text NOT NULL CHECK (reason IN ('manual', 'stale')),
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    requested_by text NOT NULL DEFAULT current_user,
    requested_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE dhgq.stage_reruns IS
    'Re-runs asked for (dhgq rerun): the stage queued, its job, and whether it must compute (fresh) or may reuse';
CREATE INDEX stage_reruns_source ON dhgq.stage_reruns (source_id, stage, job_id);

CREATE TABLE dhgq.output_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    stage text NOT NULL CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    output_id bigint REFERENCES dhgq.stage_outputs(id) ON DELETE SET NULL,
    superseded_at timestamptz NOT NULL DEFAULT now(),
    snapshot jsonb NOT NULL
);
COMMENT ON TABLE dhgq.output_history IS
    'Earlier versions of outputs, as their rows were when a newer output replaced them; removed by dhgq gc';
CREATE INDEX output_history_source ON dhgq.output_history (source_id, stage);
CREATE INDEX output_history_superseded ON dhgq.output_history (superseded_at);

-- The rows a stage's output consists of, as they are now, into the history (nothing when the
-- stage has no output yet). Called by the completing transaction before it writes the new ones.
CREATE FUNCTION dhgq.snapshot_outputs_v1(p_source_id uuid, p_stage text) RETURNS integer
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_output_id bigint;
    v_result jsonb;
    v_snapshot jsonb;
BEGIN
    SELECT o.id, o.result INTO v_output_id, v_result FROM dhgq.stage_outputs o
     WHERE o.source_id = p_source_id AND o.stage = p_stage AND o.superseded_at IS NULL;
    IF p_stage = 'extraction' THEN
        SELECT jsonb_build_object('source', jsonb_build_object(
                   'audio_extraction_path', s.audio_extraction_path,
                   'audio_duration_seconds', s.audio_duration_seconds, 'audio_channels', s.audio_channels,
                   'audio_bitrate', s.audio_bitrate, 'audio_quality_metrics', s.audio_quality_metrics,
                   'content_hash', s.content_hash))
          INTO v_snapshot
          FROM public.sources_google s WHERE s.id = p_source_id AND s.audio_extraction_path IS NOT NULL;
    ELSIF p_stage IN ('transcription', 'summarization') THEN
        SELECT jsonb_build_object('document', to_jsonb(d),
                   'segments', (SELECT coalesce(jsonb_agg(to_jsonb(g) ORDER BY g.start_time, g.id), '[]'::jsonb)
                                  FROM public.audio_segments g WHERE g.expert_document_id = d.id))
          INTO v_snapshot
          FROM public.expert_documents d
         WHERE d.source_id = p_source_id
           AND d.content_type = CASE p_stage WHEN 'transcription' THEN 'transcript' ELSE 'summary' END;
    ELSIF p_stage = 'diarization' THEN
        -- the speakers, and the transcript's segments as the fan-in labelled them
        SELECT jsonb_build_object('speakers', jsonb_agg(to_jsonb(p) ORDER BY p.label),
                   'labelled_segments', (
                       SELECT coalesce(jsonb_agg(jsonb_build_object('start', g.start_time, 'end', g.end_time,
                                                                    'speaker', sp.label)
                                                 ORDER BY g.start_time, g.id), '[]'::jsonb)
                         FROM public.expert_documents d
                         JOIN public.audio_segments g ON g.expert_document_id = d.id
                         LEFT JOIN public.speaker_profiles sp ON sp.id = g.speaker_id
                        WHERE d.source_id = p_source_id AND d.content_type = 'transcript'))
          INTO v_snapshot
          FROM public.speaker_profiles p WHERE p.source_id = p_source_id
        HAVING count(*) > 0;
    ELSE
        RAISE EXCEPTION 'unknown stage %', p_stage USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_snapshot IS NULL THEN
        RETURN 0;
    END IF;
    INSERT INTO dhgq.output_history (source_id, stage, output_id, snapshot)
    VALUES (p_source_id, p_stage, v_output_id, v_snapshot || jsonb_build_object('result', v_result));
    RETURN 1;
END;
$$;

-- Re-run stages of a source and what depends on them, keeping what lies upstream. Returns the
-- stages queued now (the others follow them), or NULL when a run is in flight (nothing done).
-- p_fresh: the queued stages compute, never reuse; p_options are merged into the source's
-- options (checked as a request's are) first, e.g. {"model": "base"}.
CREATE FUNCTION dhgq.rerun_v1(p_source_id uuid, p_stages text[], p_fresh boolean DEFAULT true,
                              p_reason text DEFAULT 'manual', p_options jsonb DEFAULT '{}'::jsonb)
    RETURNS text[] LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_all constant text[] := ARRAY['extraction', 'transcription', 'diarization', 'summarization'];
    v_audio text;
    v_options jsonb;
    v_done text[];
    v_roots text[];
    v_rerun text[];
    v_stage text;
    v_job bigint;
BEGIN
    IF p_stages IS NULL OR cardinality(p_stages) = 0 OR NOT p_stages <@ v_all THEN
        RAISE EXCEPTION 'stages must be some of %, not %', array_to_string(v_all, ', '), p_stages
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.audio_extraction_path, s.options INTO v_audio, v_options FROM public.sources_google s
     WHERE s.id = p_source_id AND NOT s.is_deleted FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no source %', p_source_id USING ERRCODE = 'no_data_found';
    END IF;
    v_options := dhgq.request_options_v1(v_options || coalesce(p_options, '{}'::jsonb));  -- refused before anything
    IF EXISTS (SELECT 1 FROM dhgq.audio_processing_stages  -- waiting_budget: 20261130000700_ledger_budgets
               WHERE source_id = p_source_id AND status IN ('queued', 'processing', 'waiting_budget')) THEN
        RETURN NULL;
    END IF;
    v_done := ARRAY(SELECT stage FROM dhgq.audio_processing_stages
                    WHERE source_id = p_source_id AND status = 'completed');
    IF 'extraction' = ANY (p_stages) THEN
        v_roots := ARRAY['extraction'];
        v_rerun := v_all;
    ELSIF p_stages && ARRAY['transcription', 'diarization'] THEN
        v_roots := ARRAY(SELECT s FROM unnest(ARRAY['transcription', 'diarization']) s WHERE s = ANY (p_stages));
        v_rerun := v_roots || 'summarization'::text;
    ELSE
        v_roots := ARRAY['summarization'];
        v_rerun := v_roots;
    END IF;
    IF v_roots && ARRAY['transcription', 'diarization']
       AND (v_audio IS NULL OR NOT 'extraction' = ANY (v_done)) THEN
        RAISE EXCEPTION 'source % has no extracted audio (never extracted, or removed by dhgq gc): re-run its extraction',
            p_source_id USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT 'extraction' = ANY (v_roots) THEN
        -- the side-by-side stage that is not re-run must be done, or the fan-in would never come
        FOREACH v_stage IN ARRAY ARRAY['transcription', 'diarization'] LOOP
            IF NOT v_stage = ANY (v_roots) AND NOT v_stage = ANY (v_done) THEN
                RAISE EXCEPTION '% of source % has not completed: re-run it too, or retry the source',
                    v_stage, p_source_id USING ERRCODE = 'object_not_in_prerequisite_state';
            END IF;
        END LOOP;
    END IF;
    IF p_options IS NOT NULL AND p_options <> '{}'::jsonb THEN
        UPDATE public.sources_google SET options = v_options WHERE id = p_source_id;
    END IF;
    -- what follows the re-run stages waits for them: its rows go, its outputs stay until replaced
    DELETE FROM dhgq.audio_processing_stages
     WHERE source_id = p_source_id AND stage = ANY (v_rerun) AND NOT stage = ANY (v_roots);
    FOREACH v_stage IN ARRAY v_roots LOOP
        IF v_stage = 'extraction' THEN
            v_job := dhgq.start_pipeline_v1(p_source_id);
        ELSE
            v_job := dhgq.enqueue_stage_v1(p_source_id, v_stage);
        END IF;
        INSERT INTO dhgq.stage_reruns (source_id, stage, job_id, fresh, reason, options)
        VALUES (p_source_id, v_stage, v_job, p_fresh, p_reason, coalesce(p_options, '{}'::jsonb));
    END LOOP;
    RETURN v_roots;
END;
$$;

-- Current outputs built with another model version or prompt version than the workers use now.
CREATE VIEW dhgq.stale_outputs AS
SELECT o.id AS output_id,
       o.source_id,
       src.name AS source_name,
       o.stage,
       o.engine,
       o.model,
       o.model_version,
       c.model_version AS current_model_version,
       o.prompt_version,
       c.prompt_version AS current_prompt_version,
       array_remove(ARRAY[
           CASE WHEN o.model_version IS DISTINCT FROM c.model_version THEN 'model_version' END,
           CASE WHEN o.prompt_version IS DISTINCT FROM c.prompt_version THEN 'prompt_version' END
       ], NULL) AS reasons,
       o.created_at,
       c.recorded_at AS current_recorded_at
  FROM dhgq.stage_outputs o
  JOIN dhgq.current_versions c ON c.stage = o.stage AND c.engine = o.engine AND c.model = o.model
  JOIN public.sources_google src ON src.id = o.source_id AND NOT src.is_deleted
 WHERE o.superseded_at IS NULL
   AND (o.model_version IS DISTINCT FROM c.model_version OR o.prompt_version IS DISTINCT FROM c.prompt_version);
COMMENT ON VIEW dhgq.stale_outputs IS
    'Current outputs whose model or prompt version differs from dhgq.current_versions; dhgq rerun --stale';

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
