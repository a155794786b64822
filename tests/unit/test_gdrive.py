"""gdrive:// sources against a local stand-in for Google's token endpoint and Drive v3 (tests/support/fake_drive.py).

The service account is real: a fresh RSA key pair, a JSON key file as the Cloud console writes
it, the RS256 assertion google-auth signs, which the server verifies with the public key. Only the
host is local (the key file's token_uri points at it, and google-auth honours it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dhgq.errors import ConfigurationError, PermanentError, TransientError
from dhgq.fetch import fetch, google_credentials
from dhgq.fetch.gdrive import DRIVE_SCOPE, download_drive_file, parse_drive_uri
from dhgq.settings import Settings
from tests.support.fake_drive import (
    GOOGLE_TOKEN_AUDIENCE,
    DriveFile,
    FakeDrive,
    ServiceAccountKey,
    fake_drive_server,
    new_service_account,
)

TALK_ID = "1aB2cD3eF4gH5iJ6kL7mN8oP9qR0sT_-u"
TALK = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64  # ~16 KB that look like the start of an mp4


@pytest.fixture(scope="session")
def account() -> ServiceAccountKey:
    return new_service_account()


@pytest.fixture(autouse=True)
def fresh_token_cache() -> Iterator[None]:
    google_credentials.clear_cache()
    yield
    google_credentials.clear_cache()


@pytest.fixture
def drive(account: ServiceAccountKey) -> Iterator[FakeDrive]:
    with fake_drive_server() as fake:
        fake.trust(account)
        fake.add(DriveFile(TALK_ID, "Keynote: queues in Postgres.mp4", TALK))
        yield fake


@pytest.fixture
def key_file(tmp_path: Path, account: ServiceAccountKey, drive: FakeDrive) -> Path:
    return account.write(tmp_path / "service-account.json", drive.token_uri)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    path = tmp_path / "scratch"
    path.mkdir()
    return path


def settings_for(drive: FakeDrive, key_file: Path | None, **overrides: Any) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="postgresql://unused/none",
        gdrive_service_account_file=key_file,
        gdrive_api_url=drive.url,
        **overrides,
    )


def test_download_bytes_metadata_and_cached_token(
    drive: FakeDrive, key_file: Path, scratch: Path, account: ServiceAccountKey
) -> None:
    settings = settings_for(drive, key_file)
    with fetch(f"gdrive://{TALK_ID}", scratch, settings) as fetched:
        assert fetched.remote
        assert fetched.path.parent == scratch
        assert fetched.path.read_bytes() == TALK
        assert fetched.sha256 == hashlib.sha256(TALK).hexdigest()
        assert fetched.size == len(TALK)
        assert fetched.metadata == {
            "drive_id": TALK_ID,
            "name": "Keynote: queues in Postgres.mp4",
            "mime_type": "video/mp4",
            "size": len(TALK),
            "md5_checksum": hashlib.md5(TALK).hexdigest(),
            "modified_time": "2024-05-01T12:34:56.789Z",
            "web_view_link": f"https://drive.google.com/file/d/{TALK_ID}/view?usp=drivesdk",
            "thumbnail_link": f"https://lh3.googleusercontent.com/drive-storage/{TALK_ID}=s220",
            "parent_folder_id": "1FolderOfTalks0000000",
        }
        kept = fetched.path
    assert not kept.exists()
    assert list(scratch.iterdir()) == []

    again = download_drive_file(f"gdrive://{TALK_ID}", scratch, settings)
    assert again.path.read_bytes() == TALK
    assert drive.token_requests == 1  # the token of the first download served the second
    assert (drive.metadata_requests, drive.media_requests) == (2, 2)

    (claims,) = drive.assertions
    assert claims["iss"] == account.client_email
    assert claims["aud"] == GOOGLE_TOKEN_AUDIENCE  # what Google requires; the request itself went to token_uri
    assert claims["scope"] == DRIVE_SCOPE
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["_header"] == {"alg": "RS256", "typ": "JWT", "kid": account.private_key_id}


def test_shared_drive_file_gives_its_drive(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    shared_id = "0BsharedDriveFile00001"
    drive.add(DriveFile(shared_id, "panel.m4a", b"panel audio", mime_type="audio/mp4", drive_id="0AsharedDrive00X"))
    fetched = download_drive_file(f"gdrive://{shared_id}", scratch, settings_for(drive, key_file))
    assert fetched.path.read_bytes() == b"panel audio"
    assert fetched.metadata["root_drive_id"] == "0AsharedDrive00X"
    assert fetched.metadata["mime_type"] == "audio/mp4"


def test_unknown_file_is_permanent_and_names_it(
    drive: FakeDrive, key_file: Path, scratch: Path, account: ServiceAccountKey
) -> None:
    missing = "1NoSuchFileAnywhere000"
    with pytest.raises(PermanentError) as caught:
        download_drive_file(f"gdrive://{missing}", scratch, settings_for(drive, key_file))
    assert missing in str(caught.value)
    assert account.client_email in str(caught.value)
    assert caught.value.file == f"gdrive://{missing}"
    assert drive.media_requests == 0


def test_google_doc_is_permanent(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    doc_id = "1GoogleDocNotAFile0000"
    drive.add(DriveFile(doc_id, "Talk notes", mime_type="application/vnd.google-apps.document"))
    with pytest.raises(PermanentError, match="Google-native document"):
        download_drive_file(f"gdrive://{doc_id}", scratch, settings_for(drive, key_file))
    assert drive.media_requests == 0


def test_declared_size_over_the_limit_is_refused_before_download(
    drive: FakeDrive, key_file: Path, scratch: Path
) -> None:
    huge_id = "1HugeRecording00000000"
    drive.add(DriveFile(huge_id, "all-day.mp4", b"x" * 4096, size=50 * 1024**3))
    with pytest.raises(PermanentError, match="DHGQ_MAX_SOURCE_BYTES"):
        with fetch(f"gdrive://{huge_id}", scratch, settings_for(drive, key_file, max_source_bytes=1024**3)):
            pass
    assert drive.media_requests == 0
    assert list(scratch.iterdir()) == []


def test_content_over_the_limit_is_refused_while_downloading(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    """A declared size that understates the content does not get it past the limit."""
    liar_id = "1UnderstatedSize000000"
    drive.add(DriveFile(liar_id, "longer-than-said.mp4", TALK, size=100))
    with pytest.raises(PermanentError, match="DHGQ_MAX_SOURCE_BYTES"):
        download_drive_file(f"gdrive://{liar_id}", scratch, settings_for(drive, key_file, max_source_bytes=1000))
    assert drive.media_requests == 1
    assert list(scratch.iterdir()) == []


def test_unavailable_then_served_is_transient_then_succeeds(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    flaky_id = "1FlakyBackend000000000"
    drive.add(DriveFile(flaky_id, "q-and-a.mp4", TALK, failures=1))
    settings = settings_for(drive, key_file)
    with pytest.raises(TransientError, match="503"):
        download_drive_file(f"gdrive://{flaky_id}", scratch, settings)  # the queue retries the stage...
    fetched = download_drive_file(f"gdrive://{flaky_id}", scratch, settings)  # ...and the retry gets the file
    assert fetched.sha256 == hashlib.sha256(TALK).hexdigest()
    assert drive.token_requests == 1


def test_md5_mismatch_is_transient_and_leaves_nothing(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    corrupt_id = "1CorruptInTransit00000"
    drive.add(DriveFile(corrupt_id, "broken.mp4", TALK, md5=hashlib.md5(b"something else").hexdigest()))
    with pytest.raises(TransientError, match="corrupted"):
        download_drive_file(f"gdrive://{corrupt_id}", scratch, settings_for(drive, key_file))
    assert list(scratch.iterdir()) == []


def test_account_google_does_not_know_is_permanent(drive: FakeDrive, tmp_path: Path, scratch: Path) -> None:
    stranger = new_service_account("deleted-account")
    key_file = stranger.write(tmp_path / "stranger.json", drive.token_uri)
    with pytest.raises(PermanentError, match="Google refused the credentials of") as caught:
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, key_file))
    assert "invalid_grant" in str(caught.value)
    assert stranger.client_email in str(caught.value)
    assert drive.metadata_requests == 0


def test_key_that_does_not_match_the_account_is_permanent(
    drive: FakeDrive, tmp_path: Path, scratch: Path, account: ServiceAccountKey
) -> None:
    """The account exists but the key was rotated: the signature does not verify."""
    forged = ServiceAccountKey(account.client_email, account.private_key_id, new_service_account().private_key)
    key_file = forged.write(tmp_path / "old-key.json", drive.token_uri)
    with pytest.raises(PermanentError, match="Invalid JWT Signature"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, key_file))


def test_token_endpoint_outage_is_transient(drive: FakeDrive, key_file: Path, scratch: Path) -> None:
    """google-auth retries a 503 of the token endpoint itself (three attempts); an outage beyond is transient."""
    drive.token_failures = 3
    settings = settings_for(drive, key_file)
    with pytest.raises(TransientError, match="token endpoint"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings)
    assert drive.token_requests == 3
    drive.token_failures = 1
    assert download_drive_file(f"gdrive://{TALK_ID}", scratch, settings).size == len(TALK)
    assert drive.token_requests == 5  # the 503, then the token


def test_application_default_credentials_without_a_key_setting(
    drive: FakeDrive, key_file: Path, scratch: Path, account: ServiceAccountKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE: google-auth's Application Default Credentials
    (GOOGLE_APPLICATION_CREDENTIALS here; gcloud's or a Cloud machine's elsewhere)."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    fetched = download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, None))
    assert fetched.path.read_bytes() == TALK
    assert [claims["iss"] for claims in drive.assertions] == [account.client_email]


def test_no_credentials_at_all_is_a_configuration_error(
    drive: FakeDrive, scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))  # no gcloud user credentials
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # and no metadata server to ask: this is not a Google Cloud machine
    with pytest.raises(ConfigurationError, match="DHGQ_GDRIVE_SERVICE_ACCOUNT_FILE"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, None))
    assert drive.token_requests == 0


def test_unreadable_or_damaged_key_is_a_configuration_error_that_hides_the_key(
    drive: FakeDrive, tmp_path: Path, scratch: Path, account: ServiceAccountKey
) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, tmp_path / "missing.json"))

    not_json = tmp_path / "not-json.json"
    not_json.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not a JSON key file"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, not_json))

    damaged = account.key_json(drive.token_uri)
    secret = damaged["private_key"].splitlines()[5]
    damaged["private_key"] = damaged["private_key"].replace(secret, secret[::-1])
    damaged_file = tmp_path / "damaged.json"
    damaged_file.write_text(json.dumps(damaged), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="private_key") as caught:
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, damaged_file))
    assert secret not in str(caught.value) and secret[::-1] not in str(caught.value)

    oauth_client = tmp_path / "client_secret.json"
    oauth_client.write_text(json.dumps({"installed": {"client_id": "x"}}), encoding="utf-8")
    with pytest.raises(ConfigurationError, match="not a service account key"):
        download_drive_file(f"gdrive://{TALK_ID}", scratch, settings_for(drive, oauth_client))
    assert drive.token_requests == 0


@pytest.mark.parametrize("uri", ["gdrive://", "gdrive://short", "gdrive://has space in it", "gdrive://a/b/c/d/e/f"])
def test_bad_uri_is_permanent(uri: str) -> None:
    with pytest.raises(PermanentError, match="not a gdrive://FILE_ID URI"):
        parse_drive_uri(uri)


def test_uri_parsing() -> None:
    assert parse_drive_uri(f"gdrive://{TALK_ID}") == TALK_ID
    assert parse_drive_uri(f"GDRIVE://{TALK_ID}/") == TALK_ID
