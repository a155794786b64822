"""What dhgq.redact takes out of a line, and what it leaves for the reader."""

from __future__ import annotations

import pytest

from dhgq.errors import PermanentError
from dhgq.redact import redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ1cmwiOiJtZWRpYS9hLm1wNCJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        (
            f'HTTP Request: GET http://kong:8000/storage/v1/object/sign/media/a.mp4?token={JWT} "HTTP/1.1 200 OK"',
            'HTTP Request: GET http://kong:8000/storage/v1/object/sign/media/a.mp4?token=REDACTED "HTTP/1.1 200 OK"',
        ),
        (
            "webhook https://ada:pw@hooks.example.com/x?token=abc&k=1: HTTP 500",
            "webhook https://REDACTED@hooks.example.com/x?token=REDACTED&k=REDACTED: HTTP 500",
        ),
        (
            "https://b.s3.amazonaws.com/a.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=beef: HTTP 403",
            "https://b.s3.amazonaws.com/a.mp4?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED: HTTP 403",
        ),
        ("Authorization: Bearer sk-ant-abc123456789", "Authorization: Bearer REDACTED"),
        ('{"authorization": "Bearer abcdefghijk"}', '{"authorization": "Bearer REDACTED"}'),
        (f"claims {JWT} refused", "claims REDACTED refused"),
        ("postgresql://postgres:s3cr3t@127.0.0.1:5432/db", "postgresql://REDACTED@127.0.0.1:5432/db"),
        ("host=db password=hunter2 user=x", "host=db password=REDACTED user=x"),
        ("signing with whsec_QUJDREVG= now", "signing with whsec_REDACTED now"),
        (
            "stage failed (permanent): /talks/a.mp4: no audio track",
            "stage failed (permanent): /talks/a.mp4: no audio track",
        ),
        (
            "the object key: ada/x.mp4 (see https://example.com/docs)",
            "the object key: ada/x.mp4 (see https://example.com/docs)",
        ),
    ],
)
def test_credentials_go_the_rest_stays(line: str, shown: str) -> None:
    assert redact(line) == shown


def test_errors_are_redacted_where_they_are_made() -> None:
    url = f"https://media.example.com/talk.mp4?token={JWT}"
    error = PermanentError(f"{url}: HTTP 404 Not Found", file=url)
    assert error.message == "https://media.example.com/talk.mp4?token=REDACTED: HTTP 404 Not Found"
    assert error.file == "https://media.example.com/talk.mp4?token=REDACTED" and error.file in error.message
    assert PermanentError("x").with_context(file=url).file == "https://media.example.com/talk.mp4?token=REDACTED"
