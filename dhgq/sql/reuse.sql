-- Reuse by content, re-runs and the history of outputs (dhgq/pipeline.py, dhgq/reuse.py, dhgq rerun).
-- Every name is schema-qualified. See supabase/migrations/20261130000800_reuse_rerun.sql.

-- name: reuse_source_facts
-- What a claimed stage needs to look for a reusable output: the source's content hash, and
-- whether this very job is an explicit re-run that must compute.
SELECT src.content_hash,
       EXISTS (SELECT 1 FROM dhgq.stage_reruns r
                WHERE r.source_id = src.id AND r.stage = %(stage)s AND r.job_id = %(job_id)s AND r.fresh) AS fresh
  FROM public.sources_google src
 WHERE src.id = %(source_id)s;

-- name: reuse_find
-- The newest current output under this key, of another source of the same owner (NULL owners
-- match each other: the operator's sources), whose stage row is completed. Never across owners.
SELECT o.id AS output_id, o.source_id::text AS source_id, o.stage, st.id::text AS stage_id, o.result,
       o.created_at
  FROM dhgq.stage_outputs o
  JOIN public.sources_google origin ON origin.id = o.source_id AND NOT origin.is_deleted
  JOIN public.sources_google mine ON mine.id = %(source_id)s
  JOIN dhgq.audio_processing_stages st
    ON st.source_id = o.source_id AND st.stage = o.stage AND st.status = 'completed'
 WHERE o.key = %(key)s AND o.superseded_at IS NULL AND o.reusable
   AND o.source_id <> mine.id
   AND origin.owner_id IS NOT DISTINCT FROM mine.owner_id
 ORDER BY o.created_at DESC
 LIMIT 1;

-- name: reuse_hold_origin
-- In the completing transaction: the output being copied is still current, and stays so (its
-- replacement or its source's deletion waits for this transaction) while its rows are copied.
SELECT o.id FROM dhgq.stage_outputs o
 WHERE o.id = %(output_id)s AND o.superseded_at IS NULL
   FOR SHARE;

-- name: reuse_snapshot_outputs
-- The stage's current rows into dhgq.output_history before the new output replaces them.
SELECT dhgq.snapshot_outputs_v1(%(source_id)s, %(stage)s);

-- name: reuse_supersede_output
UPDATE dhgq.stage_outputs SET superseded_at = now()
 WHERE source_id = %(source_id)s AND stage = %(stage)s AND superseded_at IS NULL;

-- name: reuse_record_output
-- The new current output under its key, and its versions as the current ones of its stage,
-- engine and model (what the worker that wrote it uses now).
WITH recorded AS (
    INSERT INTO dhgq.stage_outputs (source_id, stage, key, input_hash, engine, engine_version, model,
                                    model_version, options, prompt_version, reusable, result, reused_from)
    VALUES (%(source_id)s, %(stage)s, %(key)s, %(input_hash)s, %(engine)s, %(engine_version)s, %(model)s,
            %(model_version)s, %(options)s, %(prompt_version)s, %(reusable)s, %(result)s, %(reused_from)s)
    RETURNING id
)
INSERT INTO dhgq.current_versions AS c (stage, engine, model, engine_version, model_version, prompt_version)
SELECT %(stage)s, %(engine)s, %(model)s, %(engine_version)s, %(model_version)s, %(prompt_version)s FROM recorded
ON CONFLICT (stage, engine, model) DO UPDATE
   SET engine_version = EXCLUDED.engine_version, model_version = EXCLUDED.model_version,
       prompt_version = EXCLUDED.prompt_version, recorded_at = now()
 WHERE (c.engine_version, c.model_version, c.prompt_version)
       IS DISTINCT FROM (EXCLUDED.engine_version, EXCLUDED.model_version, EXCLUDED.prompt_version);

-- name: reuse_publish_version
-- A worker's current versions for a stage (its defaults), when it first serves the stage.
INSERT INTO dhgq.current_versions AS c (stage, engine, model, engine_version, model_version, prompt_version)
VALUES (%(stage)s, %(engine)s, %(model)s, %(engine_version)s, %(model_version)s, %(prompt_version)s)
ON CONFLICT (stage, engine, model) DO UPDATE
   SET engine_version = EXCLUDED.engine_version, model_version = EXCLUDED.model_version,
       prompt_version = EXCLUDED.prompt_version, recorded_at = now()
 WHERE (c.engine_version, c.model_version, c.prompt_version)
       IS DISTINCT FROM (EXCLUDED.engine_version, EXCLUDED.model_version, EXCLUDED.prompt_version);

-- name: artifacts_of
SELECT kind, uri, sha256, size, content_type, parts, host FROM dhgq.artifacts WHERE source_id = %(source_id)s;

-- name: reuse_copy_extraction
-- The origin's audio columns onto the new source, with the new source's own (copied) WAV artifact.
UPDATE public.sources_google dst
   SET audio_extracted = true, audio_extraction_path = %(wav_uri)s,
       audio_duration_seconds = src.audio_duration_seconds, audio_channels = src.audio_channels,
       audio_bitrate = src.audio_bitrate, audio_quality_metrics = src.audio_quality_metrics
  FROM public.sources_google src
 WHERE dst.id = %(source_id)s AND src.id = %(from_source_id)s AND src.audio_extraction_path IS NOT NULL
RETURNING dst.id;

-- name: reuse_copy_document
-- A copy of the origin's document of this type as the new source's own (a new id).
INSERT INTO public.expert_documents AS d (source_id, content_type, raw_content, processed_content,
                                          processing_status, word_count, language, whisper_model_used,
                                          ai_processing_details)
SELECT %(source_id)s, o.content_type, o.raw_content, o.processed_content, 'completed', o.word_count, o.language,
       o.whisper_model_used,
       coalesce(o.ai_processing_details, '{}'::jsonb) || jsonb_build_object('reused_from', %(reused_from)s::jsonb)
  FROM public.expert_documents o
 WHERE o.source_id = %(from_source_id)s AND o.content_type = %(content_type)s
ON CONFLICT (source_id, content_type) DO UPDATE
   SET raw_content = EXCLUDED.raw_content, processed_content = EXCLUDED.processed_content,
       processing_status = 'completed', word_count = EXCLUDED.word_count, language = EXCLUDED.language,
       whisper_model_used = EXCLUDED.whisper_model_used, ai_processing_details = EXCLUDED.ai_processing_details
RETURNING d.id;

-- name: reuse_copy_segments
-- The origin document's segment rows under the new document; speakers are linked by the fan-in.
INSERT INTO public.audio_segments (expert_document_id, start_time, end_time, text, speaker_id, confidence, metadata)
SELECT %(document_id)s, g.start_time, g.end_time, g.text, NULL, g.confidence, g.metadata
  FROM public.audio_segments g
  JOIN public.expert_documents o ON o.id = g.expert_document_id
 WHERE o.source_id = %(from_source_id)s AND o.content_type = %(content_type)s
 ORDER BY g.start_time, g.id;

-- name: reuse_copy_speakers
-- The origin's speaker profiles as the new source's own (names people gave them stay behind).
INSERT INTO public.speaker_profiles (source_id, label, embedding, embedding_model, total_speaking_seconds,
                                     segment_count, metadata)
SELECT %(source_id)s, p.label, p.embedding, p.embedding_model, p.total_speaking_seconds, p.segment_count,
       p.metadata || jsonb_build_object('reused_from', p.source_id)
  FROM public.speaker_profiles p
 WHERE p.source_id = %(from_source_id)s
RETURNING id;

-- name: reuse_transcript_content
-- What a summary is made of: the transcript as the fan-in left it (text, segments, speakers).
SELECT d.processed_content
  FROM public.expert_documents d
 WHERE d.source_id = %(source_id)s AND d.content_type = 'transcript';

-- name: rerun_source
SELECT dhgq.rerun_v1(%(source_id)s, %(stages)s::text[], %(fresh)s, %(reason)s, %(options)s);

-- name: rerun_all_sources
SELECT id::text FROM public.sources_google WHERE NOT is_deleted ORDER BY created_at, id;

-- name: rerun_source_names
SELECT id::text, name FROM public.sources_google WHERE id = ANY(%(ids)s::uuid[]);

-- name: rerun_stale
-- The stale outputs' sources and stages (optionally of some sources and one stage only).
SELECT source_id::text, array_agg(DISTINCT stage) AS stages, array_agg(DISTINCT r) AS reasons
  FROM dhgq.stale_outputs, unnest(reasons) AS r
 WHERE (%(ids)s::uuid[] IS NULL OR source_id = ANY(%(ids)s::uuid[]))
   AND (%(stage)s::text IS NULL OR stage = %(stage)s)
 GROUP BY source_id
 ORDER BY min(created_at);

-- name: rerun_where_columns
-- The columns `dhgq rerun --where` may name.
SELECT column_name::text FROM information_schema.columns
 WHERE table_schema = 'public' AND table_name = 'sources_google';
