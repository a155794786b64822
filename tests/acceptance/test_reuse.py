"""Reuse by content, end to end: real worker processes, real generated talks, a real database.

The same file submitted again by the same owner completes by copying the earlier outputs (no
model call, no Messages API request, each stage in well under a second), into rows of its own;
another Whisper model is not reused; two users never reuse or see each other's outputs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dhgq.embedded import ServerInfo
from dhgq.stage import Identity, ReuseKey
from tests.conftest import database_name, role_url
from tests.support.fake_anthropic import fake_anthropic_server
from tests.support.pipeline import insert_source, rows, scalar, stage_statuses, worker_env
from tests.support.postgrest import request, rows_or_refused
from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

pytestmark = pytest.mark.slow
STAGES = ("extraction", "transcription", "diarization", "summarization")
MODEL_CALL = "model host runs"  # what dhgq.pipeline logs before a model stage hands work to its model host


def run_worker(env: dict[str, str], timeout: float = 600) -> str:
    """One ``dhgq worker --once`` until the queues are empty; its log."""
    done = subprocess.run(
        [sys.executable, "-m", "dhgq", "worker", "--once"], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reuse-talk")
    return to_mp4(dialogue(TWO_SPEAKER_SCRIPT[:4], folder / "talk.wav").audio, folder / "talk.mp4")


def copy_of(talk: Path, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(talk, folder / name))


def add_user(db_url: str, email: str) -> uuid.UUID:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), %s) RETURNING id", (email,))
        return row.fetchone()[0]  # type: ignore[index]


def api_url(pg_info: ServerInfo, db_url: str) -> str:
    return role_url(pg_info, database_name(db_url), "authenticator")


def service_request(api: str, user: uuid.UUID, path: Path, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request for a local file, as a backend with the service key makes it through the Data API."""
    with request(api, "service_role") as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "INSERT INTO public.processing_jobs (user_id, file_path, options) VALUES (%s, %s, %s) RETURNING *",
            (user, str(path), Jsonb(options or {})),
        ).fetchone()
    assert row is not None
    return row


def stage_results(db_url: str, source_id: Any) -> dict[str, dict[str, Any]]:
    return dict(
        rows(db_url, "SELECT stage, result FROM dhgq.audio_processing_stages WHERE source_id = %s", (source_id,))
    )


def documents(db_url: str, source_id: Any) -> dict[str, tuple[Any, str]]:
    """content_type -> (id, raw_content)."""
    found = rows(
        db_url, "SELECT content_type, id, raw_content FROM expert_documents WHERE source_id = %s", (source_id,)
    )
    return {kind: (doc_id, text) for kind, doc_id, text in found}


def segments(db_url: str, source_id: Any) -> list[tuple[Any, ...]]:
    """(id, start, end, text, speaker label, speaker's source) of the source's transcript segments."""
    return rows(
        db_url,
        """SELECT g.id, g.start_time, g.end_time, g.text, p.label, p.source_id
             FROM audio_segments g JOIN expert_documents d ON d.id = g.expert_document_id
             LEFT JOIN speaker_profiles p ON p.id = g.speaker_id
            WHERE d.source_id = %s ORDER BY g.start_time, g.id""",
        (source_id,),
    )


def assert_reused_copy(db_url: str, original: Any, copy: Any) -> None:
    """Every stage of ``copy`` says it was reused from ``original``, fast; its rows are its own, alike."""
    assert stage_statuses(db_url, copy) == dict.fromkeys(STAGES, "completed")
    results = stage_results(db_url, copy)
    for stage in STAGES:
        reused = results[stage]["reused_from"]
        assert reused["source_id"] == str(original) and reused["stage"] == stage, stage
        assert results[stage]["stage_seconds"] < 1.0, (stage, results[stage]["stage_seconds"])
    mine, theirs = documents(db_url, copy), documents(db_url, original)
    assert set(mine) == set(theirs) == {"transcript", "summary"}
    for kind in mine:
        assert mine[kind][0] != theirs[kind][0] and mine[kind][1] == theirs[kind][1], kind
    copied, originals = segments(db_url, copy), segments(db_url, original)
    assert len(copied) == len(originals) > 0
    assert not {row[0] for row in copied} & {row[0] for row in originals}
    assert [row[1:5] for row in copied] == [row[1:5] for row in originals]  # times, text, speaker labels
    assert {row[5] for row in copied} == {copy}  # linked to its own speaker profiles
    audio = {
        source_id: Path(path)
        for source_id, path in rows(
            db_url, "SELECT id, audio_extraction_path FROM sources_google WHERE id IN (%s, %s)", (original, copy)
        )
    }
    assert audio[copy].parent.name == str(copy) and audio[copy].read_bytes() == audio[original].read_bytes()


def test_the_same_file_requested_again_by_its_owner_is_reused(
    pg_info: ServerInfo, db_url: str, talk: Path, tmp_path: Path
) -> None:
    api, bob = api_url(pg_info, db_url), add_user(db_url, "bob@example.com")
    with fake_anthropic_server() as claude:
        env = worker_env(
            db_url, tmp_path / "home", DHGQ_ANTHROPIC_API_KEY="sk-test", DHGQ_ANTHROPIC_BASE_URL=claude.url
        )
        first = service_request(api, bob, copy_of(talk, tmp_path / "in", "keynote.mp4"))
        log = run_worker(env)
        assert MODEL_CALL in log  # what the second run must not say
        calls = len(claude.requests)
        assert calls >= 1 and stage_results(db_url, first["source_id"])["summarization"]["method"] == "claude"

        second = service_request(api, bob, copy_of(talk, tmp_path / "in", "keynote (copy).mp4"))
        assert second["source_id"] != first["source_id"]
        log = run_worker(env)
        assert MODEL_CALL not in log, log[-3000:]
        assert len(claude.requests) == calls  # no Messages API request
    assert_reused_copy(db_url, first["source_id"], second["source_id"])
    assert scalar(db_url, "SELECT status FROM processing_jobs WHERE id = %s", (second["id"],)) == "completed"
    # dhgq status says where each stage came from, and what the first run's Claude calls cost
    status = subprocess.run(
        [sys.executable, "-m", "dhgq", "status", str(second["source_id"]), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    stages = json.loads(status.stdout)["stages"]
    assert {row["stage"]: row["reused_from"] for row in stages} == dict.fromkeys(STAGES, str(first["source_id"]))
    assert all(row["paid_calls"] == 0 and row["stale"] == [] for row in stages)
    human = subprocess.run(
        [sys.executable, "-m", "dhgq", "status", str(first["source_id"])],
        env=env | {"COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert re.search(r"summarization .*\$\d+\.\d{4} \(\d+ paid calls?\)", human.stdout), human.stdout
    # Bob reads his second transcript through the Data API, as his own rows
    [(count,)] = rows_or_refused(
        api,
        "authenticated",
        bob,
        "SELECT count(*) FROM public.expert_documents WHERE source_id = %s",
        (second["source_id"],),
    )
    assert count == 2


def test_the_operators_sources_reuse_each_other(db_url: str, talk: Path, tmp_path: Path) -> None:
    """``dhgq process`` knows content it has seen (same source); a source added another way reuses."""
    env = worker_env(db_url, tmp_path / "home")
    process = [sys.executable, "-m", "dhgq", "process", "--json"]
    added = subprocess.run([*process, str(talk)], env=env, capture_output=True, text=True, check=True)
    original = scalar(db_url, "SELECT id FROM sources_google")
    assert str(original) in added.stdout
    run_worker(env)
    again = subprocess.run(
        [*process, str(copy_of(talk, tmp_path / "in", "renamed.mp4"))], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0 and '"created": false' in again.stdout  # the same content: the same source
    assert scalar(db_url, "SELECT count(*) FROM sources_google") == 1

    synced = insert_source(db_url, copy_of(talk, tmp_path / "drive", "talk.mp4"))  # a psql user, a Drive sync
    log = run_worker(env)
    assert MODEL_CALL not in log, log[-3000:]
    assert_reused_copy(db_url, original, uuid.UUID(synced))
    # the reused extraction learnt the hash by fetching, and saved it as a computed one does
    assert scalar(db_url, "SELECT count(DISTINCT content_hash) FROM sources_google") == 1


def test_another_whisper_model_is_not_reused(db_url: str, talk: Path, tmp_path: Path) -> None:
    env = worker_env(db_url, tmp_path / "home")
    first = insert_source(db_url, talk)
    run_worker(env)
    with psycopg.connect(db_url, autocommit=True) as conn:
        second = conn.execute(
            "INSERT INTO sources_google (name, path, mime_type, options) VALUES ('b.mp4', %s, 'video/mp4', %s) "
            "RETURNING id",
            (str(copy_of(talk, tmp_path / "in", "b.mp4")), Jsonb({"model": "base"})),
        ).fetchone()[0]  # type: ignore[index]
    log = run_worker(env)
    assert stage_statuses(db_url, second) == dict.fromkeys(STAGES, "completed")
    results = stage_results(db_url, second)
    assert "reused_from" not in results["transcription"] and results["transcription"]["model"] == "base"
    assert "model host runs transcribe" in log and "model host runs diarize" not in log
    assert results["extraction"]["reused_from"]["source_id"] == first  # the audio and the speakers are the same
    assert results["diarization"]["reused_from"]["source_id"] == first
    keys = dict(rows(db_url, "SELECT source_id, model FROM dhgq.stage_outputs WHERE stage = 'transcription'"))
    assert keys == {uuid.UUID(first): "tiny.en", second: "base"}


def test_two_users_never_reuse_or_see_each_others_outputs(
    pg_info: ServerInfo, db_url: str, talk: Path, tmp_path: Path
) -> None:
    """No reuse across owners, not even by copy: a result back in a second would tell Alice that
    someone else had processed the same file."""
    api = api_url(pg_info, db_url)
    alice, bob = add_user(db_url, "alice@example.com"), add_user(db_url, "bob@example.com")
    env = worker_env(db_url, tmp_path / "home")
    bobs = service_request(api, bob, talk)
    run_worker(env)
    alices = service_request(api, alice, copy_of(talk, tmp_path / "alice", "talk.mp4"))
    log = run_worker(env)
    assert MODEL_CALL in log
    assert stage_statuses(db_url, alices["source_id"]) == dict.fromkeys(STAGES, "completed")
    assert not [s for s, r in stage_results(db_url, alices["source_id"]).items() if "reused_from" in r]
    assert (
        documents(db_url, alices["source_id"])["transcript"][1] == documents(db_url, bobs["source_id"])["transcript"][1]
    )

    for user, mine, theirs in ((alice, alices, bobs), (bob, bobs, alices)):
        sources = rows_or_refused(api, "authenticated", user, "SELECT id FROM public.sources_google")
        assert sources == [(mine["source_id"],)]
        docs = rows_or_refused(api, "authenticated", user, "SELECT source_id FROM public.expert_documents")
        assert {row[0] for row in docs} == {mine["source_id"]}
        seen = rows_or_refused(
            api,
            "authenticated",
            user,
            """SELECT count(*) FROM public.audio_segments g JOIN public.expert_documents d
                 ON d.id = g.expert_document_id WHERE d.source_id = %s""",
            (theirs["source_id"],),
        )
        assert seen == [(0,)]
        assert rows_or_refused(api, "authenticated", user, "SELECT * FROM dhgq.stage_outputs") == "refused"


def test_a_key_changes_with_every_part() -> None:
    base = ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "tiny.en", "m1", {"language": None}))
    variants = [
        ReuseKey("transcription", "abd", base.identity),
        ReuseKey("diarization", "abc", base.identity),
        ReuseKey("transcription", "abc", Identity("faster-whisper", "2", "tiny.en", "m1", {"language": None})),
        ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "base", "m1", {"language": None})),
        ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "tiny.en", "m2", {"language": None})),
        ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "tiny.en", "m1", {"language": "en"})),
        ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "tiny.en", "m1", {}, prompt_version="p")),
    ]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == len(variants) + 1
    same = ReuseKey("transcription", "abc", Identity("faster-whisper", "1", "tiny.en", "m1", {"language": None}))
    assert same.digest == base.digest
