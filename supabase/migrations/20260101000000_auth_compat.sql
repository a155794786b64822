-- Supabase compatibility for plain PostgreSQL.
--
-- On Supabase the API roles and schema `auth` (auth.users, auth.uid(), auth.role(), auth.jwt(),
-- owned by supabase_auth_admin) exist already, and the project role may not create objects in
-- `auth`: where `auth` exists this migration touches nothing in it. Elsewhere it creates just
-- enough of Supabase for the row-level security policies of the later migrations to mean the
-- same thing: the roles anon, authenticated and service_role, and those auth objects, defined
-- as Supabase defines them. Idempotent: it may run on a database that ran an earlier version.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    IF NOT has_schema_privilege('anon', 'public', 'USAGE') THEN
        GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
    END IF;
END
$$;

DO $$
BEGIN
    IF to_regnamespace('auth') IS NOT NULL THEN
        -- Supabase, or a database that ran this before: check what the policies need, change nothing.
        IF to_regclass('auth.users') IS NULL OR to_regprocedure('auth.uid()') IS NULL THEN
            RAISE EXCEPTION 'schema auth exists but lacks auth.users or auth.uid()'
                USING HINT = 'dhgq expects a Supabase database, or a PostgreSQL database without a schema named auth';
        END IF;
        RETURN;
    END IF;

    CREATE SCHEMA auth;
    GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
    CREATE TABLE auth.users (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        email text UNIQUE,
        role text,
        raw_user_meta_data jsonb,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    -- The JWT claims PostgREST puts in request.jwt.claims (and, before v10, request.jwt.claim.*).
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE SET search_path = '' AS $fn$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim.sub', true), ''),
            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
        )::uuid
    $fn$;
    CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE SET search_path = '' AS $fn$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim.role', true), ''),
            (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
        )::text
    $fn$;
    CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE SET search_path = '' AS $fn$
        SELECT coalesce(
            nullif(current_setting('request.jwt.claim', true), ''),
            nullif(current_setting('request.jwt.claims', true), '')
        )::jsonb
    $fn$;
    GRANT EXECUTE ON FUNCTION auth.uid(), auth.role(), auth.jwt() TO anon, authenticated, service_role;
END
$$;
