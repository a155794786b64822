"""``dhgq rerun --where``'s language: what it turns into SQL, and everything it refuses."""

from __future__ import annotations

import pytest

from dhgq.errors import PermanentError
from dhgq.where_filter import compile_filter

COLUMNS = {"id", "name", "path", "mime_type", "created_at", "size", "metadata", "is_deleted", "audio_extracted"}


@pytest.mark.parametrize(
    ("expression", "compiled"),
    [
        ("name LIKE 'key%'", "\"name\" LIKE 'key%'"),
        ("created_at > '2026-01-01'", "\"created_at\" > '2026-01-01'"),
        ("created_at > now() - interval '7 days'", "\"created_at\" > now() - '7 days'::interval"),
        ("NOT audio_extracted OR size >= 1048576", 'NOT ("audio_extracted") OR "size" >= 1048576'),
        (
            "(mime_type IN ('video/mp4', 'audio/mpeg') AND name NOT ILIKE '%draft%')",
            "(\"mime_type\" IN ('video/mp4', 'audio/mpeg') AND \"name\" NOT ILIKE '%draft%')",
        ),
        ("metadata->>'requested_by' IS NOT NULL", "\"metadata\" ->> 'requested_by' IS NOT NULL"),
        (
            "metadata->'drive'->>'size'::bigint BETWEEN 1 AND 2.5",  # a cast applies to the whole term
            "(\"metadata\" -> 'drive' ->> 'size')::bigint BETWEEN 1 AND 2.5",
        ),
        ("name = 'O''Brien''s talk'", "\"name\" = 'O''Brien''s talk'"),
        ("NAME != 'x'", "\"name\" <> 'x'"),
        ("created_at::date = current_date", '("created_at")::date = current_date'),
    ],
)
def test_the_language_compiles_to_the_same_condition(expression: str, compiled: str) -> None:
    assert compile_filter(expression, COLUMNS).as_string(None) == compiled


ESCAPES = {
    "lo_import": "lo_import('/etc/passwd') > 0",
    "lo_create": "lo_create(0) > 0",
    "pg_notify": "pg_notify('procrastinate_any_queue_v1', 'x') IS NULL",
    "pg_terminate_backend": "pg_terminate_backend(pg_backend_pid()) OR true",
    "a function that writes": "dhgq.cancel_source_v1(id) > 0",
    "UNION": "false) UNION SELECT id::text FROM public.sources_google WHERE (true",
    "a subquery": "id IN (SELECT id FROM public.sources_google)",
    "a semicolon": "true; DELETE FROM sources_google",
    "a line comment": "false) UNION SELECT id::text FROM public.sources_google WHERE is_deleted --",
    "a block comment": "true /* ) */",
    "a quoted identifier": "\"name\" = 'x'",
    "a dollar quote": "name = $$x$$",
    "an escape string": "name = E'\\x41'",
    "a sequence": "nextval('dhgq.procrastinate_jobs_id_seq') > 0",
    "another table": "auth.users.email LIKE '%'",
    "a cast to a role's type": "name::regrole IS NULL",
    "an unknown column": "password = 'x'",
    "an empty expression": "  ",
    "an unfinished string": "name = 'x",
    "a dangling operator": "name =",
}


@pytest.mark.parametrize("expression", ESCAPES.values(), ids=ESCAPES.keys())
def test_anything_else_is_refused_with_where_it_went_wrong(expression: str) -> None:
    with pytest.raises(PermanentError) as refused:
        compile_filter(expression, COLUMNS)
    assert refused.value.message.startswith("--where")
