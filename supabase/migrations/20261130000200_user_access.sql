-- Users see their own pipeline, nobody else's.
--
-- Every dhgq table left in `public` (which PostgREST serves) has row-level security. A signed-in
-- user (role authenticated) reads their own requests (processing_jobs) and the results of their
-- own sources: the source row, transcript and summary documents, segments with speakers, speaker
-- profiles, presentations. anon reads and changes nothing. The service role keeps what it had.
-- Policies call auth.uid() once per statement, as `(select auth.uid())`.
--
-- A user's request names an object in the configured Supabase Storage bucket under the user's
-- own folder (`<user id>/...`), never a path on a worker; its options pass an allow-list. Local
-- paths are for the CLI, the workers' own role and the service role. A request only ever finds
-- or restarts a source of the same user. Users cancel or retry their own requests through
-- dhgq_cancel_request_v1 / dhgq_retry_request_v1 (SECURITY INVOKER: row-level security decides).

-- Who owns a source, and what it was asked to do.
ALTER TABLE public.sources_google
    ADD COLUMN owner_id uuid REFERENCES auth.users(id) ON DELETE CASCADE,
    ADD COLUMN options jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN public.sources_google.owner_id IS
    'The user whose request created this source (NULL: added by the CLI, SQL or a Drive sync); only they see it';
COMMENT ON COLUMN public.sources_google.options IS
    'Processing options from the request (model, language, num_speakers, min_speakers, max_speakers)';
CREATE INDEX idx_sources_google_owner_id ON public.sources_google(owner_id);

-- Sources that requests created before owners were recorded belong to the first requester.
UPDATE public.sources_google s
   SET owner_id = u.id
  FROM auth.users u
 WHERE s.owner_id IS NULL AND u.id::text = s.metadata ->> 'requested_by';

ALTER TABLE public.processing_jobs
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN retry_requested boolean NOT NULL DEFAULT false,
    DROP CONSTRAINT processing_jobs_status_check,
    ADD CONSTRAINT processing_jobs_status_check
        CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')),
    -- deleting a user (Supabase's auth admin) takes their requests with it instead of failing
    DROP CONSTRAINT processing_jobs_user_id_fkey,
    ADD CONSTRAINT processing_jobs_user_id_fkey
        FOREIGN KEY (user_id) REFERENCES auth.users(id) ON DELETE CASCADE;
COMMENT ON COLUMN public.processing_jobs.file_path IS
    'Users: the key of an object in the configured storage bucket under their own folder ("<user id>/talk.mp4"); '
    'the service role and the CLI may also give a local path or a storage:// URI';

-- Options a user may give: an allow-list, each value checked. Returns the options to store.
CREATE FUNCTION dhgq.request_options_v1(p_options jsonb) RETURNS jsonb
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_key text;
    v_value jsonb;
    v_models text[] := ARRAY(SELECT jsonb_array_elements_text(value) FROM dhgq.config WHERE key = 'whisper_models');
    v_max_speakers integer := (SELECT value::integer FROM dhgq.config WHERE key = 'max_speakers');
BEGIN
    IF p_options IS NULL OR p_options = 'null'::jsonb THEN
        RETURN '{}'::jsonb;
    END IF;
    IF jsonb_typeof(p_options) <> 'object' THEN
        RAISE EXCEPTION 'options must be a JSON object, not %', jsonb_typeof(p_options)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(p_options::text) > 4096 THEN
        RAISE EXCEPTION 'options are too large (% characters, at most 4096)', length(p_options::text)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_options) LOOP
        IF v_key = 'model' THEN
            IF jsonb_typeof(v_value) <> 'string' OR NOT (v_value #>> '{}') = ANY (v_models) THEN
                RAISE EXCEPTION 'options.model must be one of: %', array_to_string(v_models, ', ')
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v_key = 'language' THEN
            IF jsonb_typeof(v_value) <> 'string' OR (v_value #>> '{}') !~ '^[a-z]{2,3}$' THEN
                RAISE EXCEPTION 'options.language must be a two- or three-letter ISO 639 code such as "en"'
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF v_key IN ('num_speakers', 'min_speakers', 'max_speakers') THEN
            -- a CASE, so that only numbers are cast
            IF (CASE WHEN jsonb_typeof(v_value) = 'number'
                     THEN v_value::numeric <> trunc(v_value::numeric) OR v_value::numeric NOT BETWEEN 1 AND v_max_speakers
                     ELSE true END) THEN
                RAISE EXCEPTION 'options.% must be a whole number from 1 to %', v_key, v_max_speakers
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSE
            RAISE EXCEPTION 'unknown option %; allowed: model, language, num_speakers, min_speakers, max_speakers',
                quote_literal(left(v_key, 64)) USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF p_options ? 'num_speakers' AND (p_options ? 'min_speakers' OR p_options ? 'max_speakers') THEN
        RAISE EXCEPTION 'give options.num_speakers, or min_speakers and max_speakers, not both'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (p_options ->> 'min_speakers')::numeric > (p_options ->> 'max_speakers')::numeric THEN
        RAISE EXCEPTION 'options.min_speakers is more than options.max_speakers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_options;
END;
$$;

-- A user's file_path: the key of an object under their own folder of the configured bucket.
-- Returns the source path it stands for, storage://BUCKET/KEY.
CREATE FUNCTION dhgq.user_object_uri_v1(p_user_id uuid, p_key text) RETURNS text
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_bucket text := (SELECT value #>> '{}' FROM dhgq.config WHERE key = 'storage_bucket');
    v_hint text;
    v_segment text;
BEGIN
    v_hint := format('file_path is the key of an object in storage bucket %s under your own folder, like %s',
                     quote_literal(v_bucket), quote_literal(p_user_id || '/talk.mp4'));
    IF p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'file_path is empty' USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF length(p_key) > 1024 THEN
        RAISE EXCEPTION 'file_path is longer than 1024 characters' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_key ~ '[[:cntrl:]\\]' THEN
        RAISE EXCEPTION 'file_path contains a control character or a backslash'
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    IF p_key LIKE '/%' OR p_key ~ '^[A-Za-z][A-Za-z0-9+.-]*:' THEN
        RAISE EXCEPTION 'file_path % is an absolute path or a URL, not a storage key', quote_literal(left(p_key, 200))
            USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
    END IF;
    FOREACH v_segment IN ARRAY string_to_array(p_key, '/') LOOP
        IF v_segment IN ('', '.', '..') THEN
            RAISE EXCEPTION 'file_path % has an empty, "." or ".." segment', quote_literal(left(p_key, 200))
                USING ERRCODE = 'invalid_parameter_value', HINT = v_hint;
        END IF;
    END LOOP;
    IF p_user_id IS NULL OR split_part(p_key, '/', 1) <> p_user_id::text OR position('/' IN p_key) = 0 THEN
        RAISE EXCEPTION 'file_path % is not in your own folder %', quote_literal(left(p_key, 200)),
            quote_literal(coalesce(p_user_id::text, '(not signed in)') || '/')
            USING ERRCODE = 'insufficient_privilege', HINT = v_hint;
    END IF;
    RETURN 'storage://' || v_bucket || '/' || p_key;
END;
$$;

-- A request (Supabase REST, supabase-py, SQL): check it, find or create the requester's own source
-- for the file, start its pipeline unless a run is in flight, and follow it. SECURITY DEFINER:
-- the requester has no rights in schema dhgq. The role that makes the request is the `role`
-- setting (PostgREST sets it per request; a security definer function leaves it as it was).
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
                      WHERE source_id = v_source_id AND status IN ('queued', 'processing')) THEN
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

-- A user's cancel or retry, asked by setting a flag on their own request (which row-level
-- security checks); the flag is consumed here.
CREATE FUNCTION dhgq.processing_jobs_act_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF NEW.source_id IS NOT NULL THEN
        IF NEW.cancel_requested THEN
            PERFORM dhgq.cancel_source_v1(NEW.source_id);
        ELSIF NEW.retry_requested THEN
            PERFORM dhgq.retry_source_v1(NEW.source_id);
        END IF;
    END IF;
    UPDATE public.processing_jobs SET cancel_requested = false, retry_requested = false WHERE id = NEW.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER processing_jobs_act
    AFTER UPDATE OF cancel_requested, retry_requested ON public.processing_jobs
    FOR EACH ROW WHEN (NEW.cancel_requested OR NEW.retry_requested)
    EXECUTE FUNCTION dhgq.processing_jobs_act_v1();

-- What users call (POST /rest/v1/rpc/dhgq_cancel_request_v1 {"request_id": ...}): as themselves.
CREATE FUNCTION public.dhgq_cancel_request_v1(request_id uuid) RETURNS public.processing_jobs
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_request public.processing_jobs;
BEGIN
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no request % of yours', request_id USING ERRCODE = 'PT404';  -- PostgREST: HTTP 404
    END IF;
    IF v_request.status NOT IN ('queued', 'processing') THEN
        RAISE EXCEPTION 'request % is % already: nothing to cancel', request_id, v_request.status
            USING ERRCODE = 'PT409';  -- PostgREST: HTTP 409
    END IF;
    UPDATE public.processing_jobs SET cancel_requested = true WHERE id = request_id;
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    RETURN v_request;
END;
$$;
COMMENT ON FUNCTION public.dhgq_cancel_request_v1(uuid) IS 'Cancel your own queued or running request';

CREATE FUNCTION public.dhgq_retry_request_v1(request_id uuid) RETURNS public.processing_jobs
    LANGUAGE plpgsql SECURITY INVOKER SET search_path = '' AS $$
DECLARE
    v_request public.processing_jobs;
BEGIN
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no request % of yours', request_id USING ERRCODE = 'PT404';  -- PostgREST: HTTP 404
    END IF;
    IF v_request.status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'request % is %: only a failed or cancelled request can be retried', request_id,
            v_request.status USING ERRCODE = 'PT409';  -- PostgREST: HTTP 409
    END IF;
    UPDATE public.processing_jobs SET retry_requested = true WHERE id = request_id;
    SELECT * INTO v_request FROM public.processing_jobs WHERE id = request_id;
    RETURN v_request;
END;
$$;
COMMENT ON FUNCTION public.dhgq_retry_request_v1(uuid) IS 'Resume your own failed or cancelled request from where it failed';

REVOKE ALL ON FUNCTION public.dhgq_cancel_request_v1(uuid), public.dhgq_retry_request_v1(uuid) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.dhgq_cancel_request_v1(uuid), public.dhgq_retry_request_v1(uuid)
    TO authenticated, service_role;

-- Row-level security on every dhgq table in public, and the rights that go with it. Supabase's
-- default privileges granted ALL on these tables to anon and authenticated: take that back.
ALTER TABLE public.processing_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sources_google ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.expert_documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.speaker_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.audio_segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.presentations ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.presentation_assets ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.processing_jobs ENABLE ROW LEVEL SECURITY;

REVOKE ALL ON public.processing_batches, public.sources_google, public.expert_documents, public.speaker_profiles,
              public.audio_segments, public.presentations, public.presentation_assets, public.processing_jobs
    FROM PUBLIC, anon, authenticated;
GRANT SELECT ON public.sources_google, public.expert_documents, public.speaker_profiles, public.audio_segments,
                public.presentations, public.presentation_assets, public.processing_jobs
    TO authenticated;
GRANT INSERT (id, user_id, file_path, options) ON public.processing_jobs TO authenticated;
GRANT UPDATE (cancel_requested, retry_requested) ON public.processing_jobs TO authenticated;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.processing_batches, public.sources_google, public.expert_documents,
      public.speaker_profiles, public.audio_segments, public.presentations, public.presentation_assets,
      public.processing_jobs
    TO service_role;

DROP POLICY "Users can view their own jobs" ON public.processing_jobs;
DROP POLICY "Users can create their own jobs" ON public.processing_jobs;
DROP POLICY "Service role manages all jobs" ON public.processing_jobs;

CREATE POLICY "Users read their own requests" ON public.processing_jobs
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
CREATE POLICY "Users make requests of their own" ON public.processing_jobs
    FOR INSERT TO authenticated WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY "Users cancel or retry their own requests" ON public.processing_jobs
    FOR UPDATE TO authenticated USING (user_id = (SELECT auth.uid())) WITH CHECK (user_id = (SELECT auth.uid()));

CREATE POLICY "Users read their own sources" ON public.sources_google
    FOR SELECT TO authenticated USING (owner_id = (SELECT auth.uid()));
CREATE POLICY "Users read the documents of their own sources" ON public.expert_documents
    FOR SELECT TO authenticated
    USING (source_id IN (SELECT s.id FROM public.sources_google s WHERE s.owner_id = (SELECT auth.uid())));
CREATE POLICY "Users read the speakers of their own sources" ON public.speaker_profiles
    FOR SELECT TO authenticated
    USING (source_id IN (SELECT s.id FROM public.sources_google s WHERE s.owner_id = (SELECT auth.uid())));
CREATE POLICY "Users read the segments of their own sources" ON public.audio_segments
    FOR SELECT TO authenticated
    USING (expert_document_id IN (
        SELECT d.id FROM public.expert_documents d JOIN public.sources_google s ON s.id = d.source_id
         WHERE s.owner_id = (SELECT auth.uid())));
CREATE POLICY "Users read the presentations of their own sources" ON public.presentations
    FOR SELECT TO authenticated
    USING (source_id IN (SELECT s.id FROM public.sources_google s WHERE s.owner_id = (SELECT auth.uid())));
CREATE POLICY "Users read the assets of their own presentations" ON public.presentation_assets
    FOR SELECT TO authenticated
    USING (presentation_id IN (
        SELECT p.id FROM public.presentations p JOIN public.sources_google s ON s.id = p.source_id
         WHERE s.owner_id = (SELECT auth.uid())));
-- processing_batches has no policy for users: batches are the operator's (`dhgq process DIR`).

-- Realtime: an app subscribes to its own requests' status (row-level security applies there too).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'supabase_realtime' AND NOT puballtables)
       AND NOT EXISTS (SELECT 1 FROM pg_publication_tables
                       WHERE pubname = 'supabase_realtime' AND schemaname = 'public' AND tablename = 'processing_jobs')
    THEN
        IF pg_has_role((SELECT pubowner FROM pg_publication WHERE pubname = 'supabase_realtime'), 'USAGE') THEN
            ALTER PUBLICATION supabase_realtime ADD TABLE public.processing_jobs;
        ELSE
            RAISE NOTICE 'supabase_realtime belongs to another role: add public.processing_jobs to it yourself';
        END IF;
    END IF;
END
$$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA dhgq FROM PUBLIC, anon, authenticated, service_role;
