"""dhgq's schema on a database set up as hosted Supabase sets one up, and on plain PostgreSQL.

- The migrations apply as Supabase's project role (not a superuser, no CREATE in schema auth),
  with the real Supabase CLI (``supabase db push``) and with ``dhgq db migrate``, and the two agree.
- Catalog checks equal to (or stricter than) the security lints of Supabase's Security Advisor.
- Procrastinate's own command line works on dhgq's app, private schema included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dhgq import migrations
from dhgq.embedded import ServerInfo

REPO = Path(__file__).resolve().parents[2]
EXPOSED_SCHEMAS = ("public", "graphql_public")  # what Supabase's PostgREST serves by default
SUPABASE_SCHEMAS = (
    "auth",
    "extensions",
    "storage",
    "realtime",
    "graphql",
    "graphql_public",
    "vault",
    "supabase_migrations",
    "pg_catalog",
    "information_schema",
    "pg_toast",
)
API_ROLES = ("anon", "authenticated")
DOMAIN_TABLES = {
    "processing_batches",
    "sources_google",
    "expert_documents",
    "speaker_profiles",
    "audio_segments",
    "presentations",
    "presentation_assets",
    "processing_jobs",
    "webhook_signing_keys",
}
USER_FUNCTIONS = {
    "dhgq_cancel_request_v1",
    "dhgq_retry_request_v1",
    "dhgq_rotate_webhook_secret_v1",
    "dhgq_redeliver_webhook_v1",
}

# name -> a query listing the offenders; each is one of the Security Advisor's security lints,
# written for this suite (stricter where noted).
LINTS = {
    # 0013: every table in an exposed schema has row-level security (stricter: whatever its grants)
    "rls_disabled_in_public": """
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%(exposed)s) AND NOT c.relrowsecurity""",
    # 0010: no view in an exposed schema runs as its owner (stricter: whatever its grants)
    "security_definer_view": """
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('v', 'm') AND n.nspname = ANY(%(exposed)s)
           AND NOT coalesce(c.reloptions, '{}') && ARRAY['security_invoker=true', 'security_invoker=on',
                                                         'security_invoker=1', 'security_invoker=yes']""",
    # 0028 / 0029: no SECURITY DEFINER function that anon or authenticated may execute
    # (stricter: in any schema, not only exposed ones)
    "security_definer_function_executable": """
        SELECT p.oid::regprocedure::text || ' by ' || r.rolname
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         CROSS JOIN pg_roles r
         WHERE p.prosecdef AND r.rolname = ANY(%(api_roles)s) AND NOT n.nspname = ANY(%(supabase)s)
           AND has_function_privilege(r.oid, p.oid, 'EXECUTE')""",
    # 0011: every function pins its search_path
    "function_search_path_mutable": """
        SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE NOT n.nspname = ANY(%(supabase)s) AND n.nspname NOT LIKE 'pg\\_%%'
           AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) c WHERE c LIKE 'search_path=%%')""",
    # 0003: policies call auth.<function>() once per statement, as (select auth.<function>())
    "auth_rls_initplan": """
        SELECT schemaname || '.' || tablename || ': ' || policyname FROM pg_policies
         WHERE NOT schemaname = ANY(%(supabase)s)
           AND EXISTS (SELECT 1 FROM unnest(ARRAY[coalesce(qual, ''), coalesce(with_check, '')]) e,
                                     unnest(ARRAY['auth.uid()', 'auth.jwt()', 'auth.role()', 'auth.email()',
                                                  'current_setting(']) f
                        WHERE position(f IN e) > 0 AND position('select ' || f IN lower(e)) = 0)""",
    # 0008 (INFO): a table with row-level security and no policy, in any schema but Supabase's own
    "rls_enabled_no_policy": """
        SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relrowsecurity AND NOT n.nspname = ANY(%(supabase)s)
           AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')""",
    # 0001 (INFO, performance): every foreign key has an index that starts with its columns
    "unindexed_foreign_keys": """
        SELECT c.conrelid::regclass::text || ': ' || c.conname FROM pg_constraint c
          JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE c.contype = 'f' AND NOT n.nspname = ANY(%(supabase)s)
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.conrelid
                            AND (string_to_array(i.indkey::text, ' ')::smallint[])[1:cardinality(c.conkey)]
                                = c.conkey)""",
    # 0024: no always-true policy for the API roles on writes
    "rls_policy_always_true": """
        SELECT schemaname || '.' || tablename || ': ' || policyname FROM pg_policies
         WHERE roles && ARRAY['public', 'anon', 'authenticated']::name[]
           AND cmd IN ('INSERT', 'UPDATE', 'DELETE', 'ALL')
           AND (lower(coalesce(qual, '')) IN ('true', '(true)') OR lower(coalesce(with_check, '')) IN ('true', '(true)')
                OR (cmd = 'INSERT' AND with_check IS NULL))""",
}


def offenders(conn: psycopg.Connection, lint: str) -> list[str]:
    params = {"exposed": list(EXPOSED_SCHEMAS), "api_roles": list(API_ROLES), "supabase": list(SUPABASE_SCHEMAS)}
    return sorted(row[0] for row in conn.execute(LINTS[lint], params))  # type: ignore[arg-type]


@pytest.mark.parametrize("lint", sorted(LINTS))
def test_the_advisor_finds_nothing(conn: psycopg.Connection, lint: str) -> None:
    assert offenders(conn, lint) == []


def test_the_lints_would_catch_what_they_look_for(conn: psycopg.Connection) -> None:
    """Each check flags the mistake it is about (so an empty answer above means something)."""
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE TABLE public.leaky (id int)")
        conn.execute("CREATE VIEW public.leaky_view AS SELECT 1 AS one")
        conn.execute("CREATE FUNCTION public.leaky_fn() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'")
        conn.execute(
            "CREATE POLICY slow ON public.sources_google FOR SELECT TO authenticated USING (owner_id = auth.uid())"
        )
        conn.execute("CREATE POLICY open ON public.processing_jobs FOR DELETE TO authenticated USING (true)")
        conn.execute("CREATE TABLE public.quiet (id int, source_id uuid REFERENCES public.sources_google(id))")
        conn.execute("ALTER TABLE public.quiet ENABLE ROW LEVEL SECURITY")
        found = {lint: offenders(conn, lint) for lint in LINTS}
    assert found["rls_disabled_in_public"] == ["public.leaky"]
    assert found["security_definer_view"] == ["public.leaky_view"]
    assert found["security_definer_function_executable"] == ["leaky_fn() by anon", "leaky_fn() by authenticated"]
    assert found["function_search_path_mutable"] == ["leaky_fn()"]
    assert found["auth_rls_initplan"] == ["public.sources_google: slow"]
    assert found["rls_policy_always_true"] == ["public.processing_jobs: open"]
    assert found["rls_enabled_no_policy"] == ["public.quiet"]
    assert found["unindexed_foreign_keys"] == ["quiet: quiet_source_id_fkey"]


def test_nothing_internal_is_in_an_exposed_schema(conn: psycopg.Connection) -> None:
    relations = {
        name
        for (name,) in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'v', 'm', 'p', 'f')"
        )
    }
    assert relations == DOMAIN_TABLES
    functions = {
        name for (name,) in conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
    }
    assert functions == USER_FUNCTIONS
    types = {
        name
        for (name,) in conn.execute(
            "SELECT typname FROM pg_type WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'c', 'd') "
            "AND typrelid = 0"
        )
    }
    assert types == set()
    for internal in (
        "procrastinate_jobs",
        "procrastinate_events",
        "audio_processing_stages",
        "stage_listeners",
        "components",
        "pipeline_status",
        "dead_letter",
    ):
        assert conn.execute("SELECT to_regclass(%s)", (f"dhgq.{internal}",)).fetchone() != (None,), internal


def test_no_api_role_reaches_the_private_schema(conn: psycopg.Connection) -> None:
    for role in (*API_ROLES, "service_role", "PUBLIC"):
        if role == "PUBLIC":
            granted = conn.execute(
                "SELECT count(*) FROM pg_namespace, aclexplode(nspacl) a WHERE nspname = 'dhgq' AND a.grantee = 0"
            ).fetchone()
            assert granted == (0,)
            continue
        assert conn.execute("SELECT has_schema_privilege(%s, 'dhgq', 'USAGE')", (role,)).fetchone() == (False,)
        callable_ = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'dhgq'::regnamespace "
            "AND has_function_privilege(%s, oid, 'EXECUTE')",
            (role,),
        ).fetchone()
        assert callable_ == (0,), role
    anon_tables = conn.execute(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind = 'r' AND has_table_privilege('anon', oid, 'SELECT, INSERT, UPDATE, "
        "DELETE, TRUNCATE, REFERENCES, TRIGGER')"
    ).fetchone()
    assert anon_tables == (0,)


def test_requests_are_published_to_realtime(conn: psycopg.Connection) -> None:
    published = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
    ).fetchall()
    assert published == [("public", "processing_jobs")]


def test_migrations_run_as_a_role_that_cannot_create_in_auth(conn: psycopg.Connection) -> None:
    """The fixture is what hosted Supabase is: were it not, the tests above would prove little."""
    role = conn.execute(
        "SELECT current_user, rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    assert role == ("postgres", False, True, True)
    assert conn.execute(
        "SELECT has_schema_privilege('auth', 'CREATE'), has_schema_privilege('auth', 'USAGE'), "
        "pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'auth'"
    ).fetchone() == (False, True, "supabase_auth_admin")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS auth.users (id uuid)")


# --- the real Supabase CLI -------------------------------------------------------------------------


def supabase_cli() -> str:
    found = REPO / "node_modules" / ".bin" / "supabase"
    if not found.exists():
        which = shutil.which("supabase")
        assert which, "the Supabase CLI is installed by scripts/setup.sh (npm ci): run it"
        return which
    return str(found)


def supabase(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    """The Supabase CLI against a database URL, as a user runs it from the repository."""
    env = {**os.environ, "SUPABASE_TELEMETRY_DISABLED": "1", "DO_NOT_TRACK": "1"}
    return subprocess.run(
        [supabase_cli(), *args, "--db-url", f"{db_url}?sslmode=disable"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def listed_as_applied(db_url: str) -> set[str]:
    """The versions `supabase migration list` shows as applied remotely."""
    listed = supabase("migration", "list", db_url=db_url)
    assert listed.returncode == 0, listed.stderr
    versions = set()
    for line in listed.stdout.splitlines():
        cells = [cell.strip().strip("`") for cell in line.split("|")]  # Local | Remote | Time
        if len(cells) >= 2 and cells[1].isdigit():
            versions.add(cells[1])
    return versions


@pytest.mark.slow
def test_supabase_db_push_then_dhgq_migrate_agree(empty_db_url: str) -> None:
    pushed = supabase("db", "push", "--yes", db_url=empty_db_url)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    again = supabase("db", "push", "--yes", db_url=empty_db_url)
    assert again.returncode == 0 and "up to date" in (again.stdout + again.stderr).lower(), again.stdout + again.stderr
    assert migrations.pending(empty_db_url) == []
    assert migrations.migrate(empty_db_url) == []
    assert listed_as_applied(empty_db_url) == {m.version for m in migrations.discover()}
    with psycopg.connect(empty_db_url) as conn:
        for lint in LINTS:
            assert offenders(conn, lint) == [], lint


@pytest.mark.slow
def test_dhgq_migrate_then_supabase_db_push_agree(empty_db_url: str) -> None:
    assert len(migrations.migrate(empty_db_url)) == len(migrations.discover())
    pushed = supabase("db", "push", "--yes", db_url=empty_db_url)
    assert pushed.returncode == 0 and "up to date" in (pushed.stdout + pushed.stderr).lower(), pushed.stderr
    assert listed_as_applied(empty_db_url) == {m.version for m in migrations.discover()}


# --- plain PostgreSQL ------------------------------------------------------------------------------


def test_on_plain_postgresql_the_compatibility_migration_creates_what_supabase_has(plain_pg: ServerInfo) -> None:
    with psycopg.connect(plain_pg.url("postgres"), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "plain"')
    url = plain_pg.url("plain")
    assert len(migrations.migrate(url)) == len(migrations.discover())
    assert migrations.migrate(url) == []
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role')"
        ).fetchone() == (3,)
        assert conn.execute(
            "SELECT to_regprocedure('auth.uid()') IS NOT NULL, to_regprocedure('auth.jwt()') IS NOT NULL"
        ).fetchone() == (True, True)
        for lint in LINTS:
            assert offenders(conn, lint) == [], lint


# --- Procrastinate's own tools ---------------------------------------------------------------------


def test_procrastinate_cli_reaches_the_configured_database(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DHGQ_")}
    env |= {"DHGQ_DATABASE_URL": db_url, "DHGQ_HOME": str(tmp_path)}
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO public.sources_google (name, path, mime_type) VALUES ('a', '/a.mp4', 'video/mp4')")
    procrastinate = [sys.executable, "-m", "procrastinate", "--app", "dhgq.app.app"]
    health = subprocess.run([*procrastinate, "healthchecks"], env=env, capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stderr
    assert "Found procrastinate_jobs table: OK" in health.stdout
    listed = subprocess.run([*procrastinate, "shell", "list_jobs"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "dhgq.extraction on extraction" in listed.stdout
