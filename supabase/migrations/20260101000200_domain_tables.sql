-- The domain tables of the seeds: sources, documents, segments, speakers, batches, stages,
-- presentation links, and the per-user request table behind Supabase's REST API.

CREATE TABLE public.processing_batches (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    status text NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    total_files integer NOT NULL DEFAULT 0 CHECK (total_files >= 0),
    processed_files integer NOT NULL DEFAULT 0 CHECK (processed_files >= 0),
    failed_files integer NOT NULL DEFAULT 0 CHECK (failed_files >= 0),
    processor_config jsonb NOT NULL DEFAULT '{}'::jsonb,
    started_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.sources_google (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    mime_type text,
    path text NOT NULL,                    -- a local path or a storage URI
    -- Google Drive file metadata
    drive_id text UNIQUE,
    root_drive_id text,
    parent_folder_id text,
    web_view_link text,
    thumbnail_link text,
    size bigint CHECK (size IS NULL OR size >= 0),
    modified_time timestamptz,
    md5_checksum text,
    content_hash text,                     -- sha256 of the file, for de-duplication
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_deleted boolean NOT NULL DEFAULT false,
    batch_id uuid REFERENCES public.processing_batches(id) ON DELETE SET NULL,
    -- Audio extraction results
    audio_extracted boolean NOT NULL DEFAULT false,
    audio_extraction_path text,
    audio_duration_seconds numeric CHECK (audio_duration_seconds IS NULL OR audio_duration_seconds >= 0),
    audio_channels integer CHECK (audio_channels IS NULL OR audio_channels > 0),
    audio_bitrate integer CHECK (audio_bitrate IS NULL OR audio_bitrate >= 0),
    audio_quality_metrics jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_sources_google_mime_type ON public.sources_google(mime_type);
CREATE INDEX idx_sources_google_content_hash ON public.sources_google(content_hash);
CREATE INDEX idx_sources_google_batch_id ON public.sources_google(batch_id);

CREATE TABLE public.expert_documents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    content_type text NOT NULL CHECK (content_type IN ('transcript', 'summary', 'notes', 'slides', 'other')),
    raw_content text,
    processed_content jsonb,
    processing_status text NOT NULL DEFAULT 'pending'
        CHECK (processing_status IN ('pending', 'processing', 'completed', 'failed')),
    word_count integer CHECK (word_count IS NULL OR word_count >= 0),
    language text,
    whisper_model_used text,
    ai_processing_details jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- one document of each kind per source: re-running a stage replaces it
    CONSTRAINT expert_documents_source_content_type_key UNIQUE (source_id, content_type)
);
CREATE INDEX idx_expert_documents_source_id ON public.expert_documents(source_id);

CREATE TABLE public.speaker_profiles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id uuid NOT NULL REFERENCES public.sources_google(id) ON DELETE CASCADE,
    label text NOT NULL,                   -- SPEAKER_1, SPEAKER_2, ... within the source
    display_name text,
    embedding real[],                      -- mean speaker embedding, to match voices across sources
    embedding_model text,
    total_speaking_seconds numeric CHECK (total_speaking_seconds IS NULL OR total_speaking_seconds >= 0),
    segment_count integer CHECK (segment_count IS NULL OR segment_count >= 0),
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT speaker_profiles_source_label_key UNIQUE (source_id, label)
);

-- Seeds, Appendix B
CREATE TABLE public.audio_segments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    expert_document_id uuid REFERENCES public.expert_documents(id) ON DELETE CASCADE,
    start_time numeric NOT NULL,
    end_time numeric NOT NULL,
    text text NOT NULL,
    speaker_id uuid REFERENCES public.speaker_profiles(id) ON DELETE SET NULL,
    confidence numeric,
    metadata jsonb,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT audio_segments_time_order CHECK (end_time >= start_time AND start_time >= 0)
);
CREATE INDEX idx_audio_segments_document_id ON public.audio_segments(expert_document_id);
CREATE INDEX idx_audio_segments_speaker_id ON public.audio_segments(speaker_id);

-- Seeds, Appendix B
CREATE TABLE public.audio_processing_stages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id uuid NOT NULL REFERENCES public.sources_google(id),
    stage text NOT NULL CHECK (stage IN ('extraction', 'transcription', 'diarization', 'summarization')),
    status text NOT NULL CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    job_id text, -- the Procrastinate job id
    queue_name text,
    started_at timestamp with time zone,
    completed_at timestamp with time zone,
    result jsonb,
    error text,
    attempts integer DEFAULT 0,
    created_at timestamp with time zone NOT NULL DEFAULT now(),
    updated_at timestamp with time zone NOT NULL DEFAULT now()
);
CREATE INDEX idx_processing_stages_source_id ON public.audio_processing_stages(source_id);
CREATE INDEX idx_processing_stages_job_id ON public.audio_processing_stages(job_id);
CREATE INDEX idx_processing_stages_status ON public.audio_processing_stages(status);

CREATE TABLE public.presentations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title text NOT NULL,
    source_id uuid REFERENCES public.sources_google(id) ON DELETE SET NULL,
    presented_at timestamptz,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- A link table: documents exist on their own and are linked to presentations with context.
CREATE TABLE public.presentation_assets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    presentation_id uuid NOT NULL REFERENCES public.presentations(id) ON DELETE CASCADE,
    expert_document_id uuid REFERENCES public.expert_documents(id) ON DELETE CASCADE,
    source_id uuid REFERENCES public.sources_google(id) ON DELETE CASCADE,
    asset_role text NOT NULL DEFAULT 'main'
        CHECK (asset_role IN ('main', 'transcript', 'summary', 'supplementary', 'slides', 'other')),
    importance integer CHECK (importance IS NULL OR importance BETWEEN 0 AND 10),
    timestamp_start numeric CHECK (timestamp_start IS NULL OR timestamp_start >= 0),
    timestamp_end numeric,
    relationship_metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT presentation_assets_target CHECK (expert_document_id IS NOT NULL OR source_id IS NOT NULL),
    CONSTRAINT presentation_assets_time_order CHECK (timestamp_end IS NULL OR timestamp_start IS NULL
                                                     OR timestamp_end >= timestamp_start)
);
CREATE INDEX idx_presentation_assets_presentation_id ON public.presentation_assets(presentation_id);
CREATE INDEX idx_presentation_assets_document_id ON public.presentation_assets(expert_document_id);

-- The per-user request table (architecture seed): users ask through Supabase's REST API.
CREATE TABLE public.processing_jobs (
    id uuid NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    user_id uuid NOT NULL REFERENCES auth.users(id) DEFAULT auth.uid(),
    job_id text,
    source_id uuid REFERENCES public.sources_google(id) ON DELETE SET NULL,
    file_path text NOT NULL,
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'processing', 'completed', 'failed')),
    result jsonb,
    error text
);
CREATE INDEX idx_processing_jobs_user_id ON public.processing_jobs(user_id);
CREATE INDEX idx_processing_jobs_job_id ON public.processing_jobs(job_id);
CREATE INDEX idx_processing_jobs_status ON public.processing_jobs(status);
CREATE INDEX idx_processing_jobs_source_id ON public.processing_jobs(source_id);

ALTER TABLE public.processing_jobs ENABLE ROW LEVEL SECURITY;

CREATE POLICY "Users can view their own jobs" ON public.processing_jobs
    FOR SELECT TO authenticated USING (auth.uid() = user_id);
CREATE POLICY "Users can create their own jobs" ON public.processing_jobs
    FOR INSERT TO authenticated WITH CHECK (auth.uid() = user_id);
CREATE POLICY "Service role manages all jobs" ON public.processing_jobs
    FOR ALL TO service_role USING (true) WITH CHECK (true);

GRANT SELECT, INSERT ON public.processing_jobs TO authenticated;
GRANT SELECT ON public.processing_jobs TO anon;
GRANT ALL ON public.processing_jobs TO service_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    public.sources_google, public.expert_documents, public.audio_segments, public.speaker_profiles,
    public.processing_batches, public.audio_processing_stages, public.presentations,
    public.presentation_assets
TO service_role;

-- updated_at follows every UPDATE
CREATE FUNCTION public.dhgq_touch_updated_at_v1() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['processing_batches', 'sources_google', 'expert_documents', 'speaker_profiles',
                             'audio_segments', 'audio_processing_stages', 'presentations',
                             'presentation_assets', 'processing_jobs']
    LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON public.%I
                        FOR EACH ROW EXECUTE FUNCTION public.dhgq_touch_updated_at_v1()',
                       t || '_touch_updated_at', t);
    END LOOP;
END
$$;
