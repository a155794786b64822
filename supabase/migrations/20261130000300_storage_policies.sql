-- Supabase Storage for users' media: the bucket named by dhgq.config's storage_bucket ('media'),
-- private, and row-level security policies on storage.objects that let a signed-in user read and
-- write objects under their own folder only (`<user id>/...`), the folder a processing_jobs
-- request may name. The worker reads any object with the service key (which bypasses these).
--
-- Where Supabase Storage is not installed (plain PostgreSQL) this does nothing. Where the project
-- role may not create policies on storage.objects, it warns with what to run instead: users then
-- cannot upload at all (Storage denies what no policy allows), which is safe, not open.

DO $$
DECLARE
    v_bucket text := (SELECT value #>> '{}' FROM dhgq.config WHERE key = 'storage_bucket');
    v_own text;
BEGIN
    IF to_regclass('storage.objects') IS NULL OR to_regclass('storage.buckets') IS NULL THEN
        RAISE NOTICE 'no Supabase Storage in this database: the % bucket and its policies are not created', v_bucket;
        RETURN;
    END IF;
    v_own := format('bucket_id = %L AND (storage.foldername(name))[1] = (SELECT auth.uid())::text', v_bucket);
    INSERT INTO storage.buckets (id, name, public) VALUES (v_bucket, v_bucket, false) ON CONFLICT (id) DO NOTHING;
    BEGIN
        EXECUTE format('CREATE POLICY %I ON storage.objects FOR SELECT TO authenticated USING (%s)',
                       'dhgq: users read their own media', v_own);
        EXECUTE format('CREATE POLICY %I ON storage.objects FOR INSERT TO authenticated WITH CHECK (%s)',
                       'dhgq: users upload into their own folder', v_own);
        EXECUTE format('CREATE POLICY %I ON storage.objects FOR UPDATE TO authenticated USING (%s) WITH CHECK (%s)',
                       'dhgq: users replace their own media', v_own, v_own);
        EXECUTE format('CREATE POLICY %I ON storage.objects FOR DELETE TO authenticated USING (%s)',
                       'dhgq: users delete their own media', v_own);
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot create policies on storage.objects as %: create them in the dashboard (Storage, '
            'Policies) so that authenticated users may use their own folder, %', current_user, v_own;
    END;
END
$$;
