-- Processing on upload: a media file a user uploads into their own folder of the storage bucket
-- (dhgq.config's storage_bucket, 'media') becomes a request of theirs, as if the app had inserted
-- the processing_jobs row itself: same owner, same checks (dhgq.processing_jobs_start_v1, with the key
-- checks of dhgq.user_object_uri_v1 and the options of dhgq.request_options_v1), same source.
--
-- Which uploads: objects of the storage bucket only; in a folder `<user id>/` of a user that exists,
-- uploaded by that user (storage.objects.owner_id) or by the service role (no owner: the folder's
-- user); a media type by content-type (audio/*, video/*) or by extension; never anything under a
-- `<name>.dhgq/` folder (the exports the worker writes back beside a source). Options come from the
-- object's user metadata: `{"dhgq": {"language": "en", "num_speakers": 2}}` (checked as a request's
-- options; invalid ones refuse the upload with the reason, HTTP 400 from Storage), or
-- `{"dhgq": false}`: store the file, start nothing (the SDK marks its uploads so, then inserts its
-- own request). The row `process_uploads` of dhgq.config turns the whole thing off per project.
--
-- Once per content: an overwrite of the same key (upsert) with the same bytes (Storage's eTag and
-- size unchanged) starts nothing; with new bytes it is a new request for the same source, which runs
-- the pipeline again unless a run is in flight (then the request follows that run, as a request
-- for the same file does). A copy of the same bytes under another key is a request of its own,
-- whose stages reuse the first one's outputs (dhgq.stage_outputs: no model or Claude call).
--
-- Storage writes an object twice per upload: once in a transaction it rolls back (its policy
-- check, as the user) and once for real (as its admin role); the trigger acts the same both times,
-- so an upload it refuses is refused before its bytes are stored.
--
-- Where Supabase Storage is not installed this does nothing; where the project role may not create a
-- trigger on storage.objects (hosted Supabase makes it a member of supabase_storage_admin, which owns
-- the table), it warns with the statement to run.

INSERT INTO dhgq.config (key, value, description) VALUES
    ('process_uploads', 'true',
     'Whether a media file uploaded into a user''s folder of the storage bucket starts a processing_jobs request '
     'by itself (false: only requests the app inserts)')
ON CONFLICT (key) DO NOTHING;

-- The user an upload is for, or NULL when it is not one dhgq processes (see above).
CREATE FUNCTION dhgq.upload_owner_v1(p_bucket text, p_name text, p_owner_id text) RETURNS uuid
    LANGUAGE plpgsql STABLE SET search_path = '' AS $$
DECLARE
    v_folder text := split_part(p_name, '/', 1);
    v_user uuid;
BEGIN
    IF p_bucket IS DISTINCT FROM (SELECT value #>> '{}' FROM dhgq.config WHERE key = 'storage_bucket')
       OR coalesce((SELECT value FROM dhgq.config WHERE key = 'process_uploads'), 'true'::jsonb) <> 'true'::jsonb
       OR position('/' IN p_name) = 0
       OR p_name ~ '\.dhgq/'  -- the exports of a source, written back by the worker
       OR v_folder !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    THEN
        RETURN NULL;
    END IF;
    v_user := v_folder::uuid;
    IF p_owner_id IS NOT NULL AND p_owner_id <> '' AND lower(p_owner_id) <> v_user::text THEN
        RETURN NULL;  -- someone else's upload into this folder (a policy of the project's own allowed it)
    END IF;
    IF NOT EXISTS (SELECT 1 FROM auth.users WHERE id = v_user) THEN
        RETURN NULL;
    END IF;
    RETURN v_user;
END;
$$;

-- The request an upload starts: its processing_jobs row, made by processing_jobs_start_v1 as for any request.
CREATE FUNCTION dhgq.storage_upload_request_v1() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
    v_user uuid;
    v_wanted jsonb := NEW.user_metadata -> 'dhgq';
    v_mime text := NEW.metadata ->> 'mimetype';
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.metadata ->> 'eTag' IS NOT DISTINCT FROM NEW.metadata ->> 'eTag'
                        AND OLD.metadata ->> 'size' IS NOT DISTINCT FROM NEW.metadata ->> 'size' THEN
        RETURN NULL;  -- the same bytes again, or only their metadata changed
    END IF;
    IF v_wanted = 'false'::jsonb THEN
        RETURN NULL;
    END IF;
    IF NOT (dhgq.is_media_v1(split_part(v_mime, ';', 1)) OR dhgq.is_media_v1(dhgq.guess_mime_type_v1(NEW.name))) THEN
        RETURN NULL;
    END IF;
    v_user := dhgq.upload_owner_v1(NEW.bucket_id, NEW.name, NEW.owner_id);
    IF v_user IS NULL THEN
        RETURN NULL;
    END IF;
    IF v_wanted IS NOT NULL AND jsonb_typeof(v_wanted) NOT IN ('object', 'null') THEN
        RAISE EXCEPTION 'dhgq cannot process %: user_metadata.dhgq must be an object of request options or false',
            NEW.name USING ERRCODE = 'invalid_text_representation';
    END IF;
    BEGIN
        INSERT INTO public.processing_jobs (user_id, file_path, options)
        VALUES (v_user, NEW.name, coalesce(nullif(v_wanted, 'null'::jsonb), '{}'::jsonb));
    EXCEPTION WHEN invalid_parameter_value OR insufficient_privilege THEN
        -- Storage answers 400 with the message of this SQLSTATE (22P02), and the upload is not stored
        RAISE EXCEPTION 'dhgq cannot process %: %', NEW.name, SQLERRM
            USING ERRCODE = 'invalid_text_representation',
                  HINT = 'fix the key or user_metadata.dhgq, or upload with user_metadata {"dhgq": false} to store '
                         'the file without processing it';
    END;
    RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION dhgq.upload_owner_v1(text, text, text), dhgq.storage_upload_request_v1()
    FROM PUBLIC, anon, authenticated, service_role;

DO $$
BEGIN
    IF to_regclass('storage.objects') IS NULL THEN
        RAISE NOTICE 'no Supabase Storage in this database: uploads do not start requests (none can be made)';
        RETURN;
    END IF;
    BEGIN
        CREATE TRIGGER dhgq_upload_requests
            AFTER INSERT OR UPDATE OF metadata ON storage.objects
            FOR EACH ROW EXECUTE FUNCTION dhgq.storage_upload_request_v1();
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot create a trigger on storage.objects as %: as its owner, run CREATE TRIGGER '
            'dhgq_upload_requests AFTER INSERT OR UPDATE OF metadata ON storage.objects FOR EACH ROW '
            'EXECUTE FUNCTION dhgq.storage_upload_request_v1(); until then uploads start no request', current_user;
    END;
END
$$;
