-- The roles of a hosted Supabase project, created once per test cluster by its superuser
-- (named supabase_admin there, as on Supabase). The project role `postgres` is what a Supabase
-- user connects as: not a superuser, with CREATEROLE and BYPASSRLS, a member of the API roles.
-- {{password}} is the password of the login roles postgres and authenticator.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
        CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
        CREATE ROLE authenticator LOGIN NOINHERIT;
        CREATE ROLE supabase_auth_admin LOGIN NOINHERIT CREATEROLE;
        CREATE ROLE postgres LOGIN NOSUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
        GRANT anon, authenticated, service_role TO authenticator;
        GRANT anon, authenticated, service_role TO postgres WITH ADMIN OPTION;
    END IF;
END
$$;
ALTER ROLE postgres PASSWORD {password};
ALTER ROLE authenticator PASSWORD {password};
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
