"""Users' media in the real Supabase Storage server, under dhgq's policies, and dhgq's fetcher on top.

The server (``../shared/supabase-storage``) runs on a hosted-like database where dhgq's migrations
created the ``media`` bucket and the row-level security policies on ``storage.objects`` as the project
role. Each test makes its own users and object keys, so they share one server per session.

Reached two ways: storage3 straight at the server (as dhgq's worker is configured, ``/storage/v1`` aside),
and supabase-py through the local gateway (``tests/support/gateway.py``), as an app would.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from storage3.exceptions import StorageApiError

from dhgq.errors import PermanentError
from dhgq.fetch import fetch
from dhgq.settings import Settings
from supabase import Client, ClientOptions, create_client
from tests.support import jwt as tokens
from tests.support.storage_server import StorageStack

# supabase-py 2.34 passes its own sub-clients parameters that they deprecate; not dhgq's to fix
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:supabase\._sync\.client")


def media(size: int = 64 * 1024) -> bytes:
    return os.urandom(size)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def user_client(gateway_url: str, stack: StorageStack, user_id: uuid.UUID) -> Client:
    """supabase-py as a signed-in user, without GoTrue: the user's access token in the client's headers."""
    headers = {"Authorization": f"Bearer {stack.user_token(user_id)}"}
    return create_client(gateway_url, stack.anon_key(), options=ClientOptions(headers=headers))


def status_of(exc: StorageApiError) -> str:
    return str(exc.status)


@pytest.fixture
def owner(storage_stack: StorageStack) -> uuid.UUID:
    return storage_stack.new_user()


@pytest.fixture
def uploaded(storage_stack: StorageStack, owner: uuid.UUID) -> tuple[str, bytes]:
    """An object the owner put in their own folder: (key, bytes)."""
    key, data = f"{owner}/{uuid.uuid4().hex}/talk.mp4", media()
    storage_stack.storage(storage_stack.user_token(owner)).from_(storage_stack.bucket).upload(
        key, data, {"content-type": "video/mp4"}
    )
    return key, data


def test_user_uploads_into_own_folder_and_downloads_it_back(storage_stack: StorageStack, owner: uuid.UUID) -> None:
    bucket = storage_stack.storage(storage_stack.user_token(owner)).from_(storage_stack.bucket)
    key, data = f"{owner}/talk.mp4", media(256 * 1024)

    bucket.upload(key, data, {"content-type": "video/mp4", "upsert": "true"})

    assert sha256(bucket.download(key)) == sha256(data)
    signed = bucket.create_signed_url(key, 60)["signedURL"]
    assert signed is not None
    response = httpx.get(signed)  # no credentials: the token in the URL is the permission
    assert response.status_code == 200
    assert sha256(response.content) == sha256(data)


def test_supabase_py_through_the_gateway(gateway_url: str, storage_stack: StorageStack, owner: uuid.UUID) -> None:
    """What an app does: ``create_client(project_url, anon_key)`` with the user's session, /storage/v1 prefix."""
    bucket = user_client(gateway_url, storage_stack, owner).storage.from_(storage_stack.bucket)
    key, data = f"{owner}/talk.mp4", media()

    bucket.upload(key, data, {"content-type": "video/mp4", "upsert": "true"})

    assert sha256(bucket.download(key)) == sha256(data)
    signed = bucket.create_signed_url(key, 60)["signedURL"]
    assert signed is not None and signed.startswith(f"{gateway_url}/storage/v1/object/sign/")
    assert sha256(httpx.get(signed).content) == sha256(data)
    assert [f["name"] for f in bucket.list(str(owner))] == ["talk.mp4"]
    assert bucket.exists(key) and not bucket.exists(f"{owner}/missing.mp4")  # HEAD, forwarded as such
    with pytest.raises(StorageApiError) as refused:  # Storage's answer comes back through the gateway unchanged
        bucket.upload(f"{uuid.uuid4()}/planted.mp4", media(1024), {"content-type": "video/mp4"})
    assert status_of(refused.value) == "403"


def test_upload_into_another_users_folder_is_refused(storage_stack: StorageStack, owner: uuid.UUID) -> None:
    other = storage_stack.new_user()
    bucket = storage_stack.storage(storage_stack.user_token(other)).from_(storage_stack.bucket)

    with pytest.raises(StorageApiError) as refused:
        bucket.upload(f"{owner}/planted.mp4", media(1024), {"content-type": "video/mp4"})

    assert status_of(refused.value) == "403"
    assert "row-level security" in refused.value.message


def test_another_user_cannot_read_an_object(
    storage_stack: StorageStack, owner: uuid.UUID, uploaded: tuple[str, bytes]
) -> None:
    key, _ = uploaded
    other = storage_stack.new_user()
    bucket = storage_stack.storage(storage_stack.user_token(other)).from_(storage_stack.bucket)

    with pytest.raises(StorageApiError) as hidden:
        bucket.download(key)
    assert status_of(hidden.value) == "404"  # Storage does not say that it exists
    with pytest.raises(StorageApiError):
        bucket.create_signed_url(key, 60)
    assert bucket.list(str(owner)) == []


def test_anon_is_refused(storage_stack: StorageStack, owner: uuid.UUID, uploaded: tuple[str, bytes]) -> None:
    key, _ = uploaded
    bucket = storage_stack.storage().from_(storage_stack.bucket)  # the anon key

    with pytest.raises(StorageApiError) as upload:
        bucket.upload(f"{owner}/anon.mp4", media(1024), {"content-type": "video/mp4"})
    assert status_of(upload.value) == "403"
    with pytest.raises(StorageApiError) as download:
        bucket.download(key)
    assert status_of(download.value) == "404"


def test_a_forged_token_is_refused(storage_stack: StorageStack, owner: uuid.UUID) -> None:
    forged = tokens.user_token("x" * 48, owner)  # right claims, wrong secret
    bucket = storage_stack.storage(forged).from_(storage_stack.bucket)

    with pytest.raises(StorageApiError) as refused:
        bucket.upload(f"{owner}/forged.mp4", media(1024), {"content-type": "video/mp4"})
    assert status_of(refused.value) in ("400", "401", "403")


def test_service_key_reads_any_object(storage_stack: StorageStack, uploaded: tuple[str, bytes]) -> None:
    key, data = uploaded
    bucket = storage_stack.storage(storage_stack.service_key()).from_(storage_stack.bucket)

    assert sha256(bucket.download(key)) == sha256(data)


def test_a_missing_object_is_not_found(storage_stack: StorageStack, owner: uuid.UUID) -> None:
    for token in (storage_stack.user_token(owner), storage_stack.service_key()):
        bucket = storage_stack.storage(token).from_(storage_stack.bucket)
        with pytest.raises(StorageApiError) as missing:
            bucket.download(f"{owner}/no-such-{uuid.uuid4().hex}.mp4")
        assert status_of(missing.value) == "404"


def test_a_bucket_with_a_size_limit_refuses_a_larger_object(storage_stack: StorageStack) -> None:
    service = storage_stack.storage(storage_stack.service_key())
    name = f"limited-{uuid.uuid4().hex[:12]}"
    service.create_bucket(name, options={"public": False, "file_size_limit": 1024})

    service.from_(name).upload("small.bin", media(1000), {"content-type": "application/octet-stream"})
    with pytest.raises(StorageApiError) as too_large:
        service.from_(name).upload("large.bin", media(4096), {"content-type": "application/octet-stream"})
    assert status_of(too_large.value) == "413"


# --- dhgq's fetcher ---------------------------------------------------------------------------------------


def worker_settings(stack: StorageStack, gateway_url: str, tmp_path: Path, service_key: str | None = None) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=SecretStr(stack.database_url),
        home=tmp_path / "home",
        supabase_url=gateway_url,
        supabase_service_key=SecretStr(service_key or stack.service_key()),
    )


def test_fetcher_downloads_a_users_object(
    storage_stack: StorageStack, gateway_url: str, uploaded: tuple[str, bytes], tmp_path: Path
) -> None:
    key, data = uploaded
    uri = f"storage://{storage_stack.bucket}/{key}"

    with fetch(uri, tmp_path / "scratch", worker_settings(storage_stack, gateway_url, tmp_path)) as fetched:
        assert fetched.remote
        assert fetched.sha256 == sha256(data)
        assert fetched.size == len(data)
        assert sha256(fetched.path.read_bytes()) == sha256(data)
        assert fetched.metadata == {"bucket": storage_stack.bucket, "key": key}
        path = fetched.path

    assert not path.exists()


def test_fetcher_says_a_missing_object_is_missing(
    storage_stack: StorageStack, gateway_url: str, owner: uuid.UUID, tmp_path: Path
) -> None:
    uri = f"storage://{storage_stack.bucket}/{owner}/no-such-{uuid.uuid4().hex}.mp4"

    with pytest.raises(PermanentError) as missing:
        with fetch(uri, tmp_path / "scratch", worker_settings(storage_stack, gateway_url, tmp_path)):
            pass

    assert uri in str(missing.value)
    assert "no such object" in str(missing.value)


def test_fetcher_refuses_with_a_bad_service_key(
    storage_stack: StorageStack, gateway_url: str, uploaded: tuple[str, bytes], tmp_path: Path
) -> None:
    key, _ = uploaded
    uri = f"storage://{storage_stack.bucket}/{key}"
    bad_key = tokens.service_key("not-the-project-secret-" + "x" * 32)

    with pytest.raises(PermanentError) as refused:
        with fetch(uri, tmp_path / "scratch", worker_settings(storage_stack, gateway_url, tmp_path, bad_key)):
            pass

    assert uri in str(refused.value)
    assert "refused" in str(refused.value)
    assert list((tmp_path / "scratch").iterdir()) == []
