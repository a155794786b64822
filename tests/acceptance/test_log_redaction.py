"""No credential in what a run leaves behind: a real ``dhgq worker --once`` fetches a user's object from
the real Storage server (a signed URL with its token), fails an https source whose URL carries a token,
and calls back a receiver whose URL carries one; its log output, the stage rows' errors and the
webhook delivery rows are searched for every one of them.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg

from tests.integration.test_storage import media
from tests.support.local_http import Seen, serving
from tests.support.pipeline import insert_source, rows, run_once, worker_env
from tests.support.storage_server import StorageStack

CALLBACK_TOKEN = "cb-secret-0123456789"
SOURCE_TOKEN = "src-secret-9876543210"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}")


def web_answer(seen: Seen, handler: object) -> tuple[int, dict[str, str], bytes]:
    """The https source is missing; the receiver fails its first delivery and takes the second."""
    if seen.path.startswith("/media/"):
        return 404, {}, b"no such file"
    return (500 if sum(s.path.startswith("/hooks/") for s in web_seen) == 1 else 200), {}, b""


web_seen: list[Seen] = []


def test_logs_and_rows_carry_no_credentials(storage_stack: StorageStack, gateway_url: str, tmp_path: Path) -> None:
    ada = storage_stack.new_user()
    key = f"{ada}/{uuid.uuid4().hex}/noise.mp4"  # not media: extraction fails after the download
    storage_stack.storage(storage_stack.user_token(ada)).from_(storage_stack.bucket).upload(
        key, media(4096), {"content-type": "video/mp4"}
    )
    with serving(web_answer) as web:
        web_seen[:] = []
        web.seen = web_seen
        callback = web.url(f"/hooks/dhgq?token={CALLBACK_TOKEN}")
        with psycopg.connect(storage_stack.database_url, autocommit=True) as conn:
            request_id = conn.execute(
                "INSERT INTO public.processing_jobs (user_id, file_path, callback_url) VALUES (%s, %s, %s)"
                " RETURNING id",
                (ada, key, callback),
            ).fetchone()[0]  # type: ignore[index]
        https_source = insert_source(storage_stack.database_url, web.url(f"/media/talk.mp4?token={SOURCE_TOKEN}"))
        env = worker_env(
            storage_stack.database_url,
            tmp_path / "home",
            DHGQ_SUPABASE_URL=gateway_url,
            DHGQ_SUPABASE_SERVICE_KEY=storage_stack.service_key(),
            DHGQ_ALLOW_PRIVATE_HOSTS='["127.0.0.1"]',
            DHGQ_WEBHOOK_SECRET="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY",
            DHGQ_WEBHOOK_RETRY_SCHEDULE="[0]",  # the retry at once, in this run
            DHGQ_LOG_LEVEL="DEBUG",
        )
        done = run_once(env)
    log = done.stdout + done.stderr

    assert (
        "stage failed" in log and sum(s.path.startswith("/hooks/") for s in web_seen) == 2
    )  # the run did what the test is about
    errors = rows(
        storage_stack.database_url,
        "SELECT error FROM dhgq.audio_processing_stages WHERE error IS NOT NULL AND source_id IN"
        " (SELECT source_id FROM public.processing_jobs WHERE id = %s UNION SELECT %s::uuid)",
        (request_id, https_source),
    )
    deliveries = rows(
        storage_stack.database_url,
        "SELECT last_error FROM dhgq.webhook_deliveries WHERE request_id = %s",
        (request_id,),
    )
    assert len(errors) == 2 and any("/media/talk.mp4?token=REDACTED" in e for (e,) in errors), errors
    for text in [log, *(e for (e,) in errors), *(str(d) for (d,) in deliveries)]:
        assert CALLBACK_TOKEN not in text and SOURCE_TOKEN not in text
        assert storage_stack.service_key() not in text
        assert "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY" not in text
        assert not JWT.search(text), JWT.search(text)
        assert not re.search(r"token=(?!REDACTED)", text), re.search(r".{80}token=(?!REDACTED).{20}", text)
