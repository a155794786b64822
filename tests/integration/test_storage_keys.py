"""A user's key cannot escape their folder: not in the database's check, not in the worker's fetcher,
not in the export upload, on the real Supabase Storage server with the service key.

The attack: Ada asks for ``<ada>/%2e%2e/<bob>/secret.mp4``. Checked as written it lies in her folder;
decoded by the fetcher it was ``<ada>/../<bob>/secret.mp4``, which the HTTP client normalised to
Bob's object (storage3 up to 2.33 passed dot segments through; 2.34 refuses them with a bare
ValueError). Now the key is used exactly as written, so it is checked as written, everywhere.
"""

from __future__ import annotations

import unicodedata
import uuid
from pathlib import Path

import psycopg
import pytest

from dhgq.errors import PermanentError
from dhgq.fetch import fetch
from dhgq.fetch.keys import REFUSED_RANGES, check_object_key, refused_character
from dhgq.media.types import Segment, Summary, Transcript
from dhgq.outputs import export_keys, upload_exports
from tests.integration.test_storage import media, sha256, worker_settings
from tests.support.postgrest import request
from tests.support.storage_server import StorageStack

pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:supabase\._sync\.client")

# {ada} and {bob} are filled in; each is a key that must not be fetched for Ada
HOSTILE_KEYS = [
    "{ada}/%2e%2e/{bob}/secret.mp4",
    "{ada}/%2E%2E/{bob}/secret.mp4",
    "{ada}/a%2F..%2F..%2F{bob}/secret.mp4",
    "{ada}/%252e%252e/{bob}/secret.mp4",
    "{ada}/talk.mp4?download=../{bob}/secret.mp4",
    "{ada}/talk.mp4#../{bob}",
    "{ada}/100%.mp4",
    "{ada}/\u202ekcod.mp4",  # RIGHT-TO-LEFT OVERRIDE: shows as "{ada}/4pm.dock"
    "{ada}/talk\u200b.mp4",  # ZERO WIDTH SPACE
    "{ada}/\u2066talk.mp4",  # LEFT-TO-RIGHT ISOLATE
    "{ada}/\ufefftalk.mp4",  # BYTE ORDER MARK
    "{ada}/talk\x7f.mp4",
    "{ada}/talk\x85.mp4",  # NEXT LINE (C1 control)
    "{ada}/talk\u2028.mp4",  # LINE SEPARATOR
    "{ada}/\U000e0041.mp4",  # TAG LATIN CAPITAL LETTER A
]


@pytest.fixture
def ada(storage_stack: StorageStack) -> uuid.UUID:
    return storage_stack.new_user()


@pytest.fixture
def bobs_secret(storage_stack: StorageStack) -> tuple[uuid.UUID, bytes]:
    """Bob, and what he keeps at ``<bob>/secret.mp4``."""
    bob, data = storage_stack.new_user(), media(8 * 1024)
    bucket = storage_stack.storage(storage_stack.user_token(bob)).from_(storage_stack.bucket)
    bucket.upload(f"{bob}/secret.mp4", data, {"content-type": "video/mp4"})
    return bob, data


def filled(key: str, ada: uuid.UUID, bob: uuid.UUID) -> str:
    return key.format(ada=ada, bob=bob)


# --- the database: a request as PostgREST makes it -------------------------------------------------


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=ascii)
def test_the_database_refuses_a_key_that_is_not_used_as_written(
    storage_stack: StorageStack, ada: uuid.UUID, key: str
) -> None:
    path = filled(key, ada, uuid.uuid4())
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        with request(storage_stack.authenticator_url, "authenticated", ada) as conn:
            conn.execute("INSERT INTO public.processing_jobs (file_path) VALUES (%s)", (path,))
    message = str(refused.value)
    assert "file_path" in message and ("as written" in message or "invisible formatting" in message), message


def test_ordinary_keys_still_pass(storage_stack: StorageStack, ada: uuid.UUID) -> None:
    for key in ("talks/keynote.mp4", "Vortrag über KI (2026).mp4", "a b/c-d_e.f.mp4", "日本語/講演.mp4"):
        with psycopg.connect(storage_stack.database_url, autocommit=True) as conn:
            uri = conn.execute("SELECT dhgq.user_object_uri_v1(%s, %s)", (ada, f"{ada}/{key}")).fetchone()
        assert uri == (f"storage://{storage_stack.bucket}/{ada}/{key}",)
        assert check_object_key(f"{ada}/{key}", uri="test") == f"{ada}/{key}"


def test_the_database_and_the_fetcher_refuse_the_same_characters(storage_stack: StorageStack) -> None:
    """Every code point either side refuses (and the printable ones around them) is judged alike."""
    user = uuid.uuid4()
    refused_anywhere = {c for lo, hi in REFUSED_RANGES for c in range(max(lo, 1), hi + 1)}
    refused_anywhere |= {c for c in range(1, 0x30000) if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp")}
    candidates = sorted(refused_anywhere | set(range(0x20, 0x3000)) | {0x1F600, 0x20000, 0x10FFFD})
    candidates = [c for c in candidates if not 0xD800 <= c <= 0xDFFF]
    with psycopg.connect(storage_stack.database_url, autocommit=True) as conn:
        conn.execute(
            """CREATE FUNCTION pg_temp.refuses(p_user uuid, p_code int) RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN
                   PERFORM dhgq.user_object_uri_v1(p_user, p_user || '/a' || chr(p_code) || 'b.mp4');
                   RETURN false;
               EXCEPTION WHEN invalid_parameter_value THEN RETURN true;
               END $$"""
        )
        in_sql = {
            row[0]
            for row in conn.execute(
                "SELECT c FROM unnest(%s::int[]) c WHERE pg_temp.refuses(%s, c)", (candidates, user)
            )
        }
    in_python = {c for c in candidates if refused_character(chr(c)) is not None or chr(c) == "/"}
    in_python -= {ord("/")}  # "a/b" is two segments, fine for both
    assert in_sql == in_python
    assert refused_anywhere <= in_sql


# --- the fetcher and the export upload, with the service key ---------------------------------------


@pytest.mark.parametrize("key", HOSTILE_KEYS[:5] + ["{ada}/../{bob}/secret.mp4", "{ada}//{bob}/secret.mp4"], ids=ascii)
def test_the_fetcher_never_reads_another_users_object(
    storage_stack: StorageStack,
    gateway_url: str,
    ada: uuid.UUID,
    bobs_secret: tuple[uuid.UUID, bytes],
    key: str,
    tmp_path: Path,
) -> None:
    bob, _ = bobs_secret
    uri = f"storage://{storage_stack.bucket}/{filled(key, ada, bob)}"
    scratch = tmp_path / "scratch"

    with pytest.raises(PermanentError) as refused:
        with fetch(uri, scratch, worker_settings(storage_stack, gateway_url, tmp_path)):
            pass

    assert uri in str(refused.value) and refused.value.file == uri
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_the_fetcher_still_reads_a_key_with_spaces_and_punctuation(
    storage_stack: StorageStack, gateway_url: str, ada: uuid.UUID, tmp_path: Path
) -> None:
    key, data = f"{ada}/Q&A (2026), part 1+2.mp4", media(4096)  # Storage itself takes ASCII keys only
    storage_stack.storage(storage_stack.user_token(ada)).from_(storage_stack.bucket).upload(
        key, data, {"content-type": "video/mp4"}
    )
    settings = worker_settings(storage_stack, gateway_url, tmp_path)
    with fetch(f"storage://{storage_stack.bucket}/{key}", tmp_path / "scratch", settings) as fetched:
        assert fetched.sha256 == sha256(data)


def exports() -> tuple[Transcript, Summary]:
    transcript = Transcript("Hello.", "en", [Segment(0.0, 1.0, "Hello.", speaker="SPEAKER_1")], "tiny.en", "test")
    return transcript, Summary("Hello.", [], [], "talk", "extractive")


@pytest.mark.parametrize("key", ["{ada}/%2e%2e/{bob}/talk.mp4", "{ada}/../{bob}/talk.mp4"], ids=ascii)
def test_the_export_upload_never_writes_into_another_users_folder(
    storage_stack: StorageStack,
    gateway_url: str,
    ada: uuid.UUID,
    bobs_secret: tuple[uuid.UUID, bytes],
    key: str,
    tmp_path: Path,
) -> None:
    bob, _ = bobs_secret
    transcript, summary = exports()
    uri = f"storage://{storage_stack.bucket}/{filled(key, ada, bob)}"

    with pytest.raises(PermanentError):
        upload_exports(worker_settings(storage_stack, gateway_url, tmp_path), uri, transcript, None, summary)

    service = storage_stack.storage(storage_stack.service_key()).from_(storage_stack.bucket)
    assert [entry["name"] for entry in service.list(str(bob))] == ["secret.mp4"]


def test_exports_stay_next_to_the_source(
    storage_stack: StorageStack, gateway_url: str, ada: uuid.UUID, tmp_path: Path
) -> None:
    transcript, summary = exports()
    uri = f"storage://{storage_stack.bucket}/{ada}/talks/keynote.mp4"
    uploaded = upload_exports(worker_settings(storage_stack, gateway_url, tmp_path), uri, transcript, None, summary)
    assert uploaded["srt"] == f"storage://{storage_stack.bucket}/{ada}/talks/keynote.dhgq/keynote.srt"
    assert set(export_keys("keynote.mp4").values()) >= {"keynote.dhgq/keynote.srt"}  # a service role's top-level key
