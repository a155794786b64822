"""Webhooks end to end: a request's callback_url gets one signed POST per outcome from real
``dhgq worker --once`` processes, to a real HTTP receiver on 127.0.0.1 that checks the signature.

The pipelines end without media: a request for a file that does not exist fails at extraction
(``processing_job.failed``), and a request whose stage rows are set completed by hand
(``tests/support/rows.py``) is completed by the stage trigger (``processing_job.completed``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dhgq import webhooks
from dhgq.embedded import ServerInfo
from dhgq.settings import STAGES
from tests.conftest import database_name, role_url
from tests.support.pipeline import rows, run_once, scalar, worker_env
from tests.support.postgrest import error_of, request, rows_or_refused
from tests.support.rows import SUMMARY, TRANSCRIPT, set_stage

SECRET = "whsec_test_0123456789"
MISSING = "/nonexistent/dhgq-webhook-test/talk.mp4"
ALLOW_LOOPBACK = '["127.0.0.1"]'


# --- a receiver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One POST the receiver got, and whether its signature checked out with SECRET."""

    headers: dict[str, str]
    body: bytes
    signed: bool

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next of ``answers`` (200 once they run out) and keeps what came."""

    answers: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks/dhgq?token=abc"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        self.hits.append(Hit(headers, body, signature_checks_out(headers.get("x-dhgq-signature", ""), body)))
        return self.answers.pop(0) if self.answers else 200


def signature_checks_out(header: str, body: bytes) -> bool:
    """The receiver's own check, written from the documented scheme (not with dhgq's verify())."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if "t" not in fields or "v1" not in fields or abs(time.time() - int(fields["t"])) > 300:
        return False
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


@contextmanager
def receiving(*answers: int) -> Iterator[Receiver]:
    receiver = Receiver(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = receiver.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


# --- requests and workers -----------------------------------------------------------------------


def add_user(db_url: str, email: str = "carol@example.com") -> uuid.UUID:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("INSERT INTO auth.users (id, email) VALUES (gen_random_uuid(), %s) RETURNING id", (email,))
        return row.fetchone()[0]  # type: ignore[index]


def add_request(db_url: str, file_path: str = MISSING, callback_url: str | None = None) -> tuple[str, str]:
    """A request made with the project role's rights (a local path is allowed): (request id, source id)."""
    user = add_user(db_url, f"{uuid.uuid4().hex[:8]}@example.com")
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO public.processing_jobs (user_id, file_path, callback_url) VALUES (%s, %s, %s)"
            " RETURNING id, source_id",
            (user, file_path, callback_url),
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def complete_by_hand(db_url: str, source_id: str) -> None:
    """Every stage completed, with the documents, as the pipeline would leave them."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        for content_type, content in (("transcript", TRANSCRIPT), ("summary", SUMMARY)):
            conn.execute(
                "INSERT INTO public.expert_documents (source_id, content_type, processed_content, processing_status)"
                " VALUES (%s, %s, %s, 'completed') ON CONFLICT (source_id, content_type) DO NOTHING",
                (source_id, content_type, Jsonb(content)),
            )
        for stage in STAGES:
            set_stage(conn, source_id, stage, "completed", progress=100, attempts=1, result=Jsonb({}))


def deliveries(db_url: str, request_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            "SELECT outcome, status, attempts, response_status, last_error, delivered_at, job_id"
            "  FROM dhgq.webhook_deliveries WHERE request_id = %s ORDER BY created_at",
            (request_id,),
        ).fetchall()


def request_status(db_url: str, request_id: str) -> str:
    return scalar(db_url, "SELECT status FROM public.processing_jobs WHERE id = %s", (request_id,))


def env_for(db_url: str, home: Path, **extra: str) -> dict[str, str]:
    """A worker's environment: the webhook secret set, the receiver's loopback address allowed."""
    webhook = {"DHGQ_WEBHOOK_SECRET": SECRET, "DHGQ_ALLOW_PRIVATE_HOSTS": ALLOW_LOOPBACK}
    return worker_env(db_url, home, **(webhook | extra))


# --- deliveries -----------------------------------------------------------------------------------


def test_one_signed_delivery_per_outcome(db_url: str, tmp_path: Path) -> None:
    with receiving() as receiver:
        request_id, source_id = add_request(db_url, callback_url=receiver.url())
        quiet_id, _ = add_request(db_url, "/nonexistent/dhgq-webhook-test/quiet.mp4")  # no callback_url
        env = env_for(db_url, tmp_path)
        run_once(env)
        assert request_status(db_url, request_id) == "failed"
        [hit] = receiver.hits
        assert hit.signed
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["user-agent"] == "dhgq-webhook"
        assert hit.headers["x-dhgq-delivery"] == f"{request_id}:failed"
        assert webhooks.verify(SECRET, hit.headers["x-dhgq-signature"], hit.body)
        event = hit.json
        assert event["event"] == "processing_job.failed" and event["status"] == "failed"
        assert (event["request_id"], event["source_id"]) == (request_id, source_id)
        assert "extraction" in event["error"] and event["result"] is None
        assert event["completed_at"].endswith("Z") and event["delivered_at"].endswith("Z")
        [failed] = deliveries(db_url, request_id)
        assert (failed["outcome"], failed["status"], failed["attempts"], failed["response_status"]) == (
            "failed",
            "delivered",
            1,
            200,
        )
        assert failed["delivered_at"] is not None and failed["last_error"] is None
        assert deliveries(db_url, quiet_id) == []

        run_once(env)  # nothing left to deliver
        assert len(receiver.hits) == 1

        # retried, the request fails again: the same outcome is not announced twice
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE public.processing_jobs SET retry_requested = true WHERE id = %s", (request_id,))
        assert request_status(db_url, request_id) == "queued"
        run_once(env)
        assert request_status(db_url, request_id) == "failed"
        assert len(receiver.hits) == 1

        # ... but a different outcome is
        complete_by_hand(db_url, source_id)
        assert request_status(db_url, request_id) == "completed"
        run_once(env)
        run_once(env)
        assert len(receiver.hits) == 2
        completed = receiver.hits[1]
        assert completed.signed and completed.headers["x-dhgq-delivery"] == f"{request_id}:completed"
        assert completed.json["event"] == "processing_job.completed" and completed.json["error"] is None
        assert set(completed.json["result"]["documents"]) == {"transcript", "summary"}
        assert [(d["outcome"], d["status"]) for d in deliveries(db_url, request_id)] == [
            ("failed", "delivered"),
            ("completed", "delivered"),
        ]
    jobs = rows(db_url, "SELECT task_name, status::text FROM dhgq.procrastinate_jobs WHERE queue_name = 'webhooks'")
    assert jobs == [("dhgq.webhook", "succeeded")] * 2


def test_a_failing_receiver_gets_it_on_the_third_try(db_url: str, tmp_path: Path) -> None:
    with receiving(500, 503, 200) as receiver:
        request_id, _ = add_request(db_url, callback_url=receiver.url())
        run_once(env_for(db_url, tmp_path))
    assert [hit.signed for hit in receiver.hits] == [True] * 3
    assert {hit.headers["x-dhgq-delivery"] for hit in receiver.hits} == {f"{request_id}:failed"}
    assert {hit.json["event"] for hit in receiver.hits} == {"processing_job.failed"}
    [delivery] = deliveries(db_url, request_id)
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == ("delivered", 3, 200)
    job = rows(db_url, "SELECT status::text, attempts FROM dhgq.procrastinate_jobs WHERE queue_name = 'webhooks'")
    assert job == [("succeeded", 3)]  # one job, run three times


@pytest.mark.parametrize(
    ("answer", "reason"),
    [(410, "HTTP 410"), (302, "redirects are not followed")],
)
def test_a_refusing_receiver_is_not_asked_again(db_url: str, tmp_path: Path, answer: int, reason: str) -> None:
    with receiving(answer) as receiver:
        request_id, _ = add_request(db_url, callback_url=receiver.url())
        run_once(env_for(db_url, tmp_path))
    assert len(receiver.hits) == 1  # the redirect is not followed either
    [delivery] = deliveries(db_url, request_id)
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == ("failed", 1, answer)
    assert reason in delivery["last_error"] and "token" not in delivery["last_error"]


def test_a_private_address_is_refused_and_never_contacted(db_url: str, tmp_path: Path) -> None:
    with receiving() as receiver:
        request_id, _ = add_request(db_url, callback_url=receiver.url("localhost"))
        run_once(env_for(db_url, tmp_path, DHGQ_ALLOW_PRIVATE_HOSTS="[]"))
    assert receiver.hits == []
    [delivery] = deliveries(db_url, request_id)
    assert (delivery["status"], delivery["attempts"], delivery["response_status"]) == ("failed", 1, None)
    assert "private, loopback or link-local" in delivery["last_error"]
    assert scalar(db_url, "SELECT status::text FROM dhgq.procrastinate_jobs WHERE id = %s", (delivery["job_id"],)) == (
        "failed"
    )


def test_nothing_is_sent_unsigned(db_url: str, tmp_path: Path) -> None:
    with receiving() as receiver:
        request_id, _ = add_request(db_url, callback_url=receiver.url())
        env = env_for(db_url, tmp_path)
        del env["DHGQ_WEBHOOK_SECRET"]
        run_once(env)
    assert receiver.hits == []
    [delivery] = deliveries(db_url, request_id)
    assert (delivery["status"], delivery["attempts"]) == ("failed", 1)
    assert "DHGQ_WEBHOOK_SECRET is not set" in delivery["last_error"]


# --- what users may ask for (as PostgREST makes requests) ----------------------------------------

MALFORMED = [
    "ftp://x",
    "javascript:alert(1)",
    "https://user:pass@example.com/hook",
    "https://token@example.com/hook",
    "https:///no-host",
    "https://example.com/a b",
    "https://example.com/\x07bell",
    "https://example.com\\@evil.example/",
    "https://example.com:99999/hook",
    "example.com/hook",
    "https://example.com/" + "a" * 2048,
]


@pytest.fixture
def api_url(pg_info: ServerInfo, db_url: str) -> str:
    return role_url(pg_info, database_name(db_url), "authenticator")


def insert_as(api_url: str, role: str, owner: uuid.UUID, callback_url: str) -> dict[str, Any]:
    """A request for a file in ``owner``'s folder, by them (authenticated) or for them (service_role)."""
    user = owner if role == "authenticated" else None
    values = {"file_path": f"{owner}/talk.mp4", "callback_url": callback_url}
    if user is None:
        values["user_id"] = str(owner)
    with request(api_url, role, user) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            f"INSERT INTO public.processing_jobs ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})"
            " RETURNING *",
            tuple(values.values()),
        ).fetchone()
    assert row is not None
    return row


def test_users_give_a_callback_url(db_url: str, api_url: str) -> None:
    user = add_user(db_url)
    row = insert_as(api_url, "authenticated", user, "https://hooks.example.com/dhgq?k=1")
    assert row["callback_url"] == "https://hooks.example.com/dhgq?k=1" and row["status"] == "queued"
    assert insert_as(api_url, "service_role", user, "http://[2001:db8::1]:8443/hook")["callback_url"]
    # the deliveries are nobody's business but the workers'
    assert rows_or_refused(api_url, "authenticated", user, "SELECT * FROM dhgq.webhook_deliveries") == "refused"
    assert rows_or_refused(api_url, "service_role", None, "SELECT * FROM dhgq.webhook_deliveries") == "refused"
    # a user may not move it afterwards
    moved = error_of(
        api_url, "authenticated", user, "UPDATE public.processing_jobs SET callback_url = 'https://x.example/'"
    )
    assert isinstance(moved, psycopg.errors.InsufficientPrivilege)


@pytest.mark.parametrize("url", MALFORMED, ids=lambda url: repr(url[:40]))
def test_a_malformed_callback_url_is_refused(db_url: str, api_url: str, url: str) -> None:
    user = add_user(db_url)
    error = error_of(
        api_url,
        "authenticated",
        user,
        "INSERT INTO public.processing_jobs (file_path, callback_url) VALUES (%s, %s)",
        (f"{user}/talk.mp4", url),
    )
    assert error is not None and error.sqlstate == "22023", error
    assert "callback_url" in str(error)
    assert scalar(db_url, "SELECT count(*) FROM public.sources_google") == 0  # nothing was started


def test_the_service_role_cannot_set_a_malformed_one_either(db_url: str, api_url: str) -> None:
    user = add_user(db_url)
    request_id = insert_as(api_url, "service_role", user, "https://hooks.example.com/")["id"]
    error = error_of(
        api_url,
        "service_role",
        None,
        "UPDATE public.processing_jobs SET callback_url = 'https://a:b@hooks.example.com/' WHERE id = %s",
        (request_id,),
    )
    assert error is not None and error.sqlstate == "22023"


def test_a_users_cancel_queues_one_cancelled_delivery(db_url: str, api_url: str) -> None:
    user = add_user(db_url)
    request_id = insert_as(api_url, "authenticated", user, "https://hooks.example.com/dhgq")["id"]
    for _ in range(2):  # the second is refused: the request is cancelled already
        error_of(api_url, "authenticated", user, "SELECT public.dhgq_cancel_request_v1(%s)", (request_id,))
    assert request_status(db_url, str(request_id)) == "cancelled"
    assert [(d["outcome"], d["status"]) for d in deliveries(db_url, str(request_id))] == [("cancelled", "queued")]
    jobs = rows(
        db_url,
        "SELECT task_name, queueing_lock, lock, args FROM dhgq.procrastinate_jobs WHERE queue_name = 'webhooks'",
    )
    assert jobs == [
        (
            "dhgq.webhook",
            f"webhook:{request_id}:cancelled",
            f"webhook:{request_id}",
            {"request_id": str(request_id), "outcome": "cancelled"},
        )
    ]


# --- the signature scheme -------------------------------------------------------------------------


def test_verify_accepts_what_sign_made_and_nothing_else() -> None:
    body = b'{"event":"processing_job.completed"}'
    now = int(time.time())
    header = webhooks.sign(SECRET, now, body)
    assert header.startswith(f"t={now},v1=") and signature_checks_out(header, body)
    assert webhooks.verify(SECRET, header, body)
    assert not webhooks.verify(SECRET, header, body + b" ")
    assert not webhooks.verify("another secret", header, body)
    assert not webhooks.verify(SECRET, webhooks.sign(SECRET, now - 600, body), body)  # replayed later
    assert not webhooks.verify(SECRET, "v1=" + header.rpartition("v1=")[2], body)  # no timestamp
