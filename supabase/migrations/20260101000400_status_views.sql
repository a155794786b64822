-- Views for plain SQL users (psql, Supabase's table editor, supabase-py): what is where.

CREATE VIEW public.pipeline_stage_counts AS
SELECT stage.name AS stage,
       count(*) FILTER (WHERE s.status = 'queued') AS queued,
       count(*) FILTER (WHERE s.status = 'processing') AS processing,
       count(*) FILTER (WHERE s.status = 'completed') AS completed,
       count(*) FILTER (WHERE s.status = 'failed') AS failed,
       count(*) FILTER (WHERE s.status = 'completed' AND s.completed_at > now() - interval '5 minutes')
           AS completed_last_5_min
FROM (VALUES (1, 'extraction'), (2, 'transcription'), (3, 'diarization'), (4, 'summarization'))
     AS stage(position, name)
LEFT JOIN public.audio_processing_stages s ON s.stage = stage.name
GROUP BY stage.position, stage.name
ORDER BY stage.position;

CREATE VIEW public.pipeline_status AS
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
           ELSE 'queued'
       END AS state,
       round(coalesce(sum(CASE WHEN st.status = 'completed' THEN 100 ELSE st.progress END), 0) / 4, 1)
           AS progress,
       string_agg(st.stage || ': ' || st.error, '; ') FILTER (WHERE st.status = 'failed') AS error,
       src.created_at,
       greatest(src.updated_at, max(st.updated_at)) AS updated_at
FROM public.sources_google src
LEFT JOIN public.audio_processing_stages st ON st.source_id = src.id
WHERE NOT src.is_deleted
GROUP BY src.id;

-- What failed for good (permanent errors, or transient ones that ran out of attempts), with why.
CREATE VIEW public.dead_letter AS
SELECT st.id AS stage_id,
       st.source_id,
       src.name AS source_name,
       src.path,
       st.stage,
       st.error_class,
       st.error,
       st.attempts,
       st.job_id,
       st.completed_at AS failed_at
FROM public.audio_processing_stages st
JOIN public.sources_google src ON src.id = st.source_id
WHERE st.status = 'failed' AND st.error_class IS DISTINCT FROM 'cancelled'
ORDER BY st.completed_at DESC;

GRANT SELECT ON public.pipeline_stage_counts, public.pipeline_status, public.dead_letter TO service_role;
