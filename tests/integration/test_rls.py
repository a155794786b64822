"""What the Data API lets users do, tried as PostgREST makes requests (``tests/support/postgrest.py``)
after Bob's pipeline ran to completion on a real talk: anon reads and changes nothing, Alice reads
and changes nothing of Bob's, her requests for other people's files are refused with a clear
message, and Bob reads his transcript with speakers and his summary.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dhgq.embedded import ServerInfo
from tests.conftest import database_name, new_database, role_url
from tests.support.pipeline import run_once, worker_env
from tests.support.postgrest import error_of, request, rows_or_refused
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

PUBLIC_TABLES = (
    "processing_batches",
    "sources_google",
    "expert_documents",
    "speaker_profiles",
    "audio_segments",
    "presentations",
    "presentation_assets",
    "processing_jobs",
    "webhook_signing_keys",
)
REFUSED = (psycopg.errors.InsufficientPrivilege, psycopg.errors.InvalidParameterValue)


@dataclass(frozen=True)
class World:
    """One database after Bob's request ran to completion; Alice asked for a file of her own."""

    db_url: str  # the project role's
    api_url: str  # authenticator's, as PostgREST logs in
    alice: uuid.UUID
    bob: uuid.UUID
    alice_request: uuid.UUID
    bob_request: uuid.UUID
    bob_source: uuid.UUID
    talk: Path


def add_user(db_url: str, email: str) -> uuid.UUID:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), %s) RETURNING id", (email,)
        ).fetchone()
    assert row is not None
    return row[0]


def ask(
    api_url: str,
    role: str,
    user: uuid.UUID | None,
    file_path: str,
    options: dict[str, Any] | None = None,
    **columns: Any,
) -> dict[str, Any]:
    """A request row inserted as PostgREST would (POST /rest/v1/processing_jobs, return=representation)."""
    values = {"file_path": file_path, **({"options": Jsonb(options)} if options is not None else {}), **columns}
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    with request(api_url, role, user) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            f"INSERT INTO public.processing_jobs ({names}) VALUES ({marks}) RETURNING *", tuple(values.values())
        ).fetchone()
    assert row is not None
    return row


@pytest.fixture(scope="module")
def world(pg_info: ServerInfo, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> World:
    db_url = new_database(pg_info, template_db)
    api_url = role_url(pg_info, database_name(db_url), "authenticator")
    folder = tmp_path_factory.mktemp("rls")
    talk = to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "talk.mp4")
    alice, bob = add_user(db_url, "alice@example.com"), add_user(db_url, "bob@example.com")
    # Bob's request comes from a backend with the service key: a local path is allowed there
    bob_request = ask(
        api_url, "service_role", None, str(talk), {"num_speakers": 1, "language": "en", "model": "tiny.en"}, user_id=bob
    )
    alice_request = ask(api_url, "authenticated", alice, f"{alice}/talks/keynote.mp4")
    run_once(worker_env(db_url, folder / "home"))
    return World(db_url, api_url, alice, bob, alice_request["id"], bob_request["id"], bob_request["source_id"], talk)


def state_of_everything(db_url: str) -> str:
    """Every row of every table dhgq owns, public and internal, as one comparable text."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        tables = [f"public.{t}" for t in PUBLIC_TABLES] + [
            "dhgq.audio_processing_stages",
            "dhgq.procrastinate_jobs",
            "dhgq.config",
        ]
        dump = {
            t: sorted(
                json.dumps(r[0], sort_keys=True, default=str)
                for r in conn.execute(f"SELECT to_jsonb(t) - 'updated_at' FROM {t} t")
            )  # type: ignore[arg-type]
            for t in tables
        }
    return json.dumps(dump, sort_keys=True)


# --- Bob: his own results ------------------------------------------------------------------------


def test_bob_reads_his_transcript_with_speakers_and_summary(world: World) -> None:
    api, bob = world.api_url, world.bob
    [(status, result, error)] = rows_or_refused(
        api, "authenticated", bob, "SELECT status, result, error FROM public.processing_jobs"
    )
    assert (status, error) == ("completed", None)
    assert set(result["documents"]) == {"transcript", "summary"}
    documents = dict(
        rows_or_refused(api, "authenticated", bob, "SELECT content_type, raw_content FROM public.expert_documents")
    )
    assert set(documents) == {"transcript", "summary"} and all(text.strip() for text in documents.values())
    segments = rows_or_refused(
        api,
        "authenticated",
        bob,
        """
        SELECT s.start_time, s.text, p.label FROM public.audio_segments s
          JOIN public.speaker_profiles p ON p.id = s.speaker_id ORDER BY s.start_time""",
    )
    assert isinstance(segments, list) and len(segments) >= 2
    assert all(label.startswith("SPEAKER_") for _, _, label in segments)
    # the request's options reached the stages: one speaker (the talk has two), English, tiny.en
    assert {label for _, _, label in segments} == {"SPEAKER_1"}
    [(language, model)] = rows_or_refused(
        api,
        "authenticated",
        bob,
        "SELECT language, whisper_model_used FROM public.expert_documents WHERE content_type = 'transcript'",
    )
    assert language == "en" and model.startswith("tiny")
    [(path, options)] = rows_or_refused(api, "authenticated", bob, "SELECT path, options FROM public.sources_google")
    assert path == str(world.talk) and options == {"num_speakers": 1, "language": "en", "model": "tiny.en"}


# --- anon ------------------------------------------------------------------------------------------


def test_anon_reads_nothing(world: World) -> None:
    for table in PUBLIC_TABLES:
        assert rows_or_refused(world.api_url, "anon", None, f"SELECT * FROM public.{table}") in ("refused", []), table
    for internal in (
        "dhgq.procrastinate_jobs",
        "dhgq.audio_processing_stages",
        "dhgq.pipeline_status",
        "dhgq.dead_letter",
    ):
        assert rows_or_refused(world.api_url, "anon", None, f"SELECT * FROM {internal}") == "refused", internal


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO public.processing_jobs (user_id, file_path) VALUES ('{bob}', '{bob}/x.mp4')",
        "UPDATE public.processing_jobs SET cancel_requested = true",
        "UPDATE public.expert_documents SET raw_content = 'rewritten'",
        "DELETE FROM public.expert_documents",
        "DELETE FROM public.sources_google",
        "SELECT public.dhgq_cancel_request_v1('{bob_request}')",
        "INSERT INTO dhgq.procrastinate_jobs (queue_name, task_name, args) VALUES ('extraction', 'x', '{{}}')",
        "DELETE FROM dhgq.procrastinate_jobs",
        "SELECT dhgq.procrastinate_fetch_job_v2(ARRAY['extraction'], 1)",
        "SELECT dhgq.procrastinate_cancel_job_v1(1, true, true)",
        "SELECT dhgq.start_pipeline_v1('{bob_source}')",
        "SELECT dhgq.cancel_source_v1('{bob_source}')",
        "SELECT dhgq.retry_source_v1('{bob_source}')",
    ],
)
@pytest.mark.parametrize("role", ["anon", "alice"])
def test_nobody_changes_what_is_not_theirs(world: World, role: str, statement: str) -> None:
    """anon changes nothing; Alice changes nothing of Bob's, and reaches no internals."""
    before = state_of_everything(world.db_url)
    sql = statement.format(bob=world.bob, bob_request=world.bob_request, bob_source=world.bob_source)
    api_role, user = ("anon", None) if role == "anon" else ("authenticated", world.alice)
    error = error_of(world.api_url, api_role, user, sql)
    assert error is not None or sql.startswith(("UPDATE", "DELETE")), f"{role} ran: {sql}"
    assert state_of_everything(world.db_url) == before


# --- Alice: nothing of Bob's -------------------------------------------------------------------------


def test_alice_reads_none_of_bobs_rows(world: World) -> None:
    bobs = {str(world.bob), str(world.bob_request), str(world.bob_source)}
    for table in PUBLIC_TABLES:
        found = rows_or_refused(
            world.api_url, "authenticated", world.alice, f"SELECT to_jsonb(t)::text FROM public.{table} t"
        )
        if found == "refused":
            continue
        assert not [row for (row,) in found if any(key in row for key in bobs)], table
    [(status, error)] = rows_or_refused(
        world.api_url, "authenticated", world.alice, "SELECT status, error FROM public.processing_jobs"
    )
    assert status == "failed" and "DHGQ_SUPABASE_URL" in error  # her own request, with a reason (no Storage here)


def test_alice_cannot_cancel_or_retry_bobs_request(world: World) -> None:
    before = state_of_everything(world.db_url)
    for action in ("cancel", "retry"):
        error = error_of(
            world.api_url,
            "authenticated",
            world.alice,
            f"SELECT public.dhgq_{action}_request_v1(%s)",
            (world.bob_request,),
        )
        assert error is not None and error.sqlstate == "PT404" and "of yours" in str(error)  # PostgREST: 404
    assert state_of_everything(world.db_url) == before


@pytest.mark.parametrize(
    "file_path, message",
    [
        ("/etc/passwd", "absolute path"),
        ("../{bob}/talk.mp4", '".." segment'),
        ("{alice}/../{bob}/talk.mp4", '".." segment'),
        ("{bob}/talk.mp4", "not in your own folder"),
        ("{bob_path}", "absolute path"),
        ("storage://media/{bob}/talk.mp4", "absolute path or a URL"),
        ("{alice}", "not in your own folder"),
        ("{alice}//talk.mp4", "empty"),
        ("{alice}/talk\\.mp4", "backslash"),
        ("{alice}/talk\n.mp4", "control character"),
        ("", "empty"),
    ],
)
def test_requests_for_files_not_in_ones_own_folder_are_refused(world: World, file_path: str, message: str) -> None:
    before = state_of_everything(world.db_url)
    path = file_path.format(alice=world.alice, bob=world.bob, bob_path=world.talk)
    with pytest.raises(REFUSED) as refused:
        ask(world.api_url, "authenticated", world.alice, path)
    assert message in str(refused.value)
    assert state_of_everything(world.db_url) == before


def test_a_request_in_someone_elses_name_is_refused(world: World) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        ask(world.api_url, "authenticated", world.alice, f"{world.bob}/talk.mp4", user_id=world.bob)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):  # only the pipeline writes statuses and results
        ask(world.api_url, "authenticated", world.alice, f"{world.alice}/a.mp4", status="completed")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": "gpt-5"}, "options.model must be one of"),
        ({"language": "english"}, "ISO 639"),
        ({"num_speakers": 0}, "whole number from 1 to 20"),
        ({"num_speakers": 2.5}, "whole number"),
        ({"num_speakers": "2"}, "whole number"),
        ({"max_speakers": 1000}, "whole number from 1 to 20"),
        ({"min_speakers": 3, "max_speakers": 2}, "more than"),
        ({"num_speakers": 2, "max_speakers": 3}, "not both"),
        ({"storage_root": "/"}, "unknown option 'storage_root'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_options_pass_an_allow_list(world: World, options: Any, message: str) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        ask(world.api_url, "authenticated", world.alice, f"{world.alice}/b.mp4", options)


# --- requests, cancels and retries ------------------------------------------------------------------


def api_of(pg_info: ServerInfo, db_url: str) -> str:
    return role_url(pg_info, database_name(db_url), "authenticator")


def job_status(db_url: str, request_id: uuid.UUID) -> str:
    """The status of the Procrastinate job behind the request's extraction stage, as it is now."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT j.status::text FROM public.processing_jobs p
                              JOIN dhgq.audio_processing_stages s ON s.source_id = p.source_id
                              JOIN dhgq.procrastinate_jobs j ON j.id = s.job_id::bigint
                              WHERE p.id = %s AND s.stage = 'extraction'""",
            (request_id,),
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_users_cancel_and_retry_their_own_requests(pg_info: ServerInfo, db_url: str) -> None:
    api, alice, bob = api_of(pg_info, db_url), add_user(db_url, "a@example.com"), add_user(db_url, "b@example.com")
    mine = ask(api, "authenticated", alice, f"{alice}/talk.mp4", {"num_speakers": 2})
    assert (mine["status"], job_status(db_url, mine["id"])) == ("queued", "todo")

    error = error_of(api, "authenticated", bob, "SELECT public.dhgq_cancel_request_v1(%s)", (mine["id"],))
    assert error is not None and error.sqlstate == "PT404"
    [(status, error_text)] = rows_or_refused(
        api, "authenticated", alice, "SELECT status, error FROM public.dhgq_cancel_request_v1(%s)", (mine["id"],)
    )
    assert status == "cancelled" and "cancelled by request" in error_text
    assert job_status(db_url, mine["id"]) == "cancelled"
    again = error_of(api, "authenticated", alice, "SELECT public.dhgq_cancel_request_v1(%s)", (mine["id"],))
    assert again is not None and again.sqlstate == "PT409" and "nothing to cancel" in str(again)  # PostgREST: 409

    [(status,)] = rows_or_refused(
        api, "authenticated", alice, "SELECT status FROM public.dhgq_retry_request_v1(%s)", (mine["id"],)
    )
    assert status == "queued" and job_status(db_url, mine["id"]) == "todo"
    [(cancel, retry)] = rows_or_refused(
        api, "authenticated", alice, "SELECT cancel_requested, retry_requested FROM public.processing_jobs"
    )
    assert (cancel, retry) == (False, False)


def test_a_request_never_links_to_another_users_source(pg_info: ServerInfo, db_url: str, tmp_path: Path) -> None:
    api, alice, bob = api_of(pg_info, db_url), add_user(db_url, "a@example.com"), add_user(db_url, "b@example.com")
    shared_path = str(tmp_path / "talk.mp4")
    bobs = ask(api, "service_role", None, shared_path, user_id=bob)
    alices = ask(api, "service_role", None, shared_path, user_id=alice)
    assert alices["source_id"] != bobs["source_id"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        owners = dict(conn.execute("SELECT id, owner_id FROM public.sources_google").fetchall())
        stages = conn.execute(
            "SELECT source_id, status, job_id FROM dhgq.audio_processing_stages WHERE source_id = %s",
            (bobs["source_id"],),
        ).fetchall()
    assert owners == {bobs["source_id"]: bob, alices["source_id"]: alice}
    assert stages == [(bobs["source_id"], "queued", bobs["job_id"])]  # Bob's run untouched
    # Bob asking again while his run is in flight follows it: no new source, no new job
    again = ask(api, "service_role", None, shared_path, user_id=bob)
    assert (again["source_id"], again["job_id"]) == (bobs["source_id"], bobs["job_id"])
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM dhgq.procrastinate_jobs").fetchone() == (2,)


def test_the_service_role_starts_work_through_the_api(pg_info: ServerInfo, db_url: str) -> None:
    with request(api_of(pg_info, db_url), "service_role") as conn:
        source_id = conn.execute(
            "INSERT INTO public.sources_google (name, path, mime_type) "
            "VALUES ('k.mp4', '/talks/k.mp4', 'video/mp4') RETURNING id"
        ).fetchone()
    with psycopg.connect(db_url, autocommit=True) as conn:
        queued = conn.execute(
            "SELECT stage, status FROM dhgq.audio_processing_stages WHERE source_id = %s", source_id
        ).fetchall()
    assert queued == [("extraction", "queued")]


def test_deleting_a_user_takes_their_requests_and_sources(pg_info: ServerInfo, db_url: str) -> None:
    api, alice = api_of(pg_info, db_url), add_user(db_url, "a@example.com")
    ask(api, "authenticated", alice, f"{alice}/talk.mp4")
    with psycopg.connect(pg_info.url(database_name(db_url)), autocommit=True) as conn:
        conn.execute("SET ROLE supabase_auth_admin")  # who deletes users on Supabase
        conn.execute("DELETE FROM auth.users WHERE id = %s", (alice,))
    with psycopg.connect(db_url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT (SELECT count(*) FROM public.processing_jobs), "
            "(SELECT count(*) FROM public.sources_google), "
            "(SELECT count(*) FROM dhgq.audio_processing_stages)"
        ).fetchone()
    assert left == (0, 0, 0)
