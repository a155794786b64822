"""Webhooks end to end: a request's callback_url gets one signed POST per outcome from real
``dhgq worker --once`` processes, to a real HTTP receiver on 127.0.0.1 that verifies it with the
``standardwebhooks`` library (as the README tells receivers to), with the key of whoever set the URL.

The pipelines end without media: a request for a file that does not exist fails at extraction
(``processing_job.failed``), and a request whose stage rows are set completed by hand
(``tests/support/rows.py``) is completed by the stage trigger (``processing_job.completed``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dhgq import webhooks
from dhgq.embedded import ServerInfo
from dhgq.settings import STAGES, Settings
from dhgq.tasks.webhook import ScheduledRetry
from tests.conftest import database_name, role_url
from tests.support.local_http import Seen, serving
from tests.support.pipeline import rows, run_once, scalar, worker_env
from tests.support.postgrest import error_of, request, rows_or_refused
from tests.support.rows import SUMMARY, TRANSCRIPT, set_stage

SECRET = "whsec_b3BlcmF0b3Itc2VjcmV0LWZvci10aGUtdGVzdHMtMDEy"  # the operator's (DHGQ_WEBHOOK_SECRET)
MISSING = "/nonexistent/dhgq-webhook-test/talk.mp4"
ALLOW_LOOPBACK = '["127.0.0.1"]'
NO_WAIT = "[0, 0]"  # two retries, at once: the default schedule waits 5 s, 5 min, 30 min, ...


# --- a receiver ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def signed(self) -> bool:
        """Whether it verifies with the operator's SECRET."""
        return verifies(SECRET, self)


def verifies(secret: str, hit: Hit) -> bool:
    """The receiver's check, with the standardwebhooks library (not dhgq's code)."""
    try:
        Webhook(secret).verify(hit.body, hit.headers)
    except WebhookVerificationError:
        return False
    return True


@dataclass
class Receiver:
    """Answers each POST with the next of ``answers`` (200 once they run out) and keeps what came."""

    answers: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hooks/dhgq?token=abc"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        self.hits.append(Hit(headers, body))
        return self.answers.pop(0) if self.answers else 200


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
    """A worker's environment: the operator's secret set, the receiver's loopback address allowed, no waits."""
    webhook = {
        "DHGQ_WEBHOOK_SECRET": SECRET,
        "DHGQ_ALLOW_PRIVATE_HOSTS": ALLOW_LOOPBACK,
        "DHGQ_WEBHOOK_RETRY_SCHEDULE": NO_WAIT,
    }
    return worker_env(db_url, home, **(webhook | extra))


def callback_columns(db_url: str, request_id: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT callback_signer, callback_status, callback_outcome, callback_attempts, callback_next_attempt_at,"
            "       callback_delivered_at, callback_error FROM public.processing_jobs WHERE id = %s",
            (request_id,),
        ).fetchone()
    assert row is not None
    return row


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
        assert hit.headers["webhook-id"] == f"{request_id}:failed"
        assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 120
        assert hit.headers["webhook-signature"].startswith("v1,")
        assert webhooks.verify(SECRET, hit.headers, hit.body)
        assert hit.json["type"] == "processing_job.failed" and hit.json["timestamp"].endswith("Z")
        event = hit.json["data"]
        assert event["status"] == "failed"
        assert (event["request_id"], event["source_id"]) == (request_id, source_id)
        assert "extraction" in event["error"] and event["result"] is None
        assert event["completed_at"].endswith("Z")
        assert callback_columns(db_url, request_id) | {"callback_delivered_at": None} == {
            "callback_signer": "operator",
            "callback_status": "delivered",
            "callback_outcome": "failed",
            "callback_attempts": 1,
            "callback_next_attempt_at": None,
            "callback_delivered_at": None,
            "callback_error": None,
        }
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
        assert completed.signed and completed.headers["webhook-id"] == f"{request_id}:completed"
        assert completed.json["type"] == "processing_job.completed" and completed.json["data"]["error"] is None
        assert set(completed.json["data"]["result"]["documents"]) == {"transcript", "summary"}
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
    assert {hit.headers["webhook-id"] for hit in receiver.hits} == {f"{request_id}:failed"}
    assert {hit.json["type"] for hit in receiver.hits} == {"processing_job.failed"}
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
    assert callback_columns(db_url, request_id)["callback_status"] == "failed"
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
    assert "neither DHGQ_WEBHOOK_SECRET nor a secret of the request's owner" in delivery["last_error"]


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


def rotate(api_url: str, user: uuid.UUID) -> str:
    """The user's new webhook secret, as their app gets it (POST /rest/v1/rpc/dhgq_rotate_webhook_secret_v1)."""
    with request(api_url, "authenticated", user) as conn:
        row = conn.execute("SELECT public.dhgq_rotate_webhook_secret_v1()").fetchone()
        left = conn.execute("SELECT current_setting('dhgq.issued_webhook_secret', true)").fetchone()
    assert row is not None and row[0].startswith("whsec_")
    assert left == ("",)  # not left behind for whatever runs next in this (pooled) session
    return str(row[0])


def test_users_give_a_callback_url(db_url: str, api_url: str) -> None:
    user = add_user(db_url)
    # without a secret of their own there would be no key a receiver of theirs could check: refused
    refused = error_of(
        api_url,
        "authenticated",
        user,
        "INSERT INTO public.processing_jobs (file_path, callback_url) VALUES (%s, 'https://hooks.example.com/')",
        (f"{user}/talk.mp4",),
    )
    assert refused is not None and refused.sqlstate == "22023" and "webhook signing secret" in str(refused)
    secret = rotate(api_url, user)
    row = insert_as(api_url, "authenticated", user, "https://hooks.example.com/dhgq?k=1")
    assert row["callback_url"] == "https://hooks.example.com/dhgq?k=1" and row["status"] == "queued"
    assert row["callback_signer"] == "user"
    assert insert_as(api_url, "service_role", user, "http://[2001:db8::1]:8443/hook")["callback_signer"] == "operator"
    # the secret is shown once: the user reads its fingerprint, nobody reads the secret through the API
    [(fingerprint,)] = rows_or_refused(api_url, "authenticated", user, "SELECT fingerprint FROM webhook_signing_keys")
    assert len(fingerprint) == 16 and fingerprint not in secret and secret not in str(fingerprint)
    for role, who in (("authenticated", user), ("service_role", None)):
        assert rows_or_refused(api_url, role, who, "SELECT * FROM dhgq.webhook_deliveries") == "refused"
        assert rows_or_refused(api_url, role, who, "SELECT * FROM dhgq.webhook_secrets") == "refused"
    # a user may not move the URL afterwards, nor claim the operator's key
    moved = error_of(
        api_url, "authenticated", user, "UPDATE public.processing_jobs SET callback_url = 'https://x.example/'"
    )
    assert isinstance(moved, psycopg.errors.InsufficientPrivilege)
    claimed = error_of(
        api_url,
        "authenticated",
        user,
        "INSERT INTO public.processing_jobs (file_path, callback_url, callback_signer) VALUES (%s, %s, 'operator')",
        (f"{user}/talk.mp4", "https://hooks.example.com/"),
    )
    assert isinstance(claimed, psycopg.errors.InsufficientPrivilege)


def test_another_users_key_neither_signs_nor_verifies(db_url: str, api_url: str, tmp_path: Path) -> None:
    """Ada's and Bob's deliveries are signed with their own secrets only, not with the operator's."""
    ada, bob = add_user(db_url, "ada@example.com"), add_user(db_url, "bob@example.com")
    ada_secret, bob_secret = rotate(api_url, ada), rotate(api_url, bob)
    with receiving() as receiver:
        ada_request = insert_as(api_url, "authenticated", ada, receiver.url())["id"]
        bob_request = insert_as(api_url, "authenticated", bob, receiver.url())["id"]
        run_once(env_for(db_url, tmp_path))  # storage:// without Storage configured: both fail at extraction
    by_request = {hit.json["data"]["request_id"]: hit for hit in receiver.hits}
    ada_hit, bob_hit = by_request[str(ada_request)], by_request[str(bob_request)]
    assert verifies(ada_secret, ada_hit) and not verifies(bob_secret, ada_hit) and not ada_hit.signed
    assert verifies(bob_secret, bob_hit) and not verifies(ada_secret, bob_hit) and not bob_hit.signed
    # Bob, holding his own secret, cannot make a body Ada's receiver accepts
    forged = Hit(
        {
            **ada_hit.headers,
            "webhook-signature": Webhook(bob_secret).sign(
                ada_hit.headers["webhook-id"], datetime.now(UTC), ada_hit.body
            ),
        },
        ada_hit.body,
    )
    assert not verifies(ada_secret, forged)


def test_a_rotated_secret_signs_alongside_the_previous_one_for_a_day(db_url: str, api_url: str, tmp_path: Path) -> None:
    ada = add_user(db_url)
    old = rotate(api_url, ada)
    new = rotate(api_url, ada)
    assert new != old
    [(valid_until,)] = rows_or_refused(
        api_url, "authenticated", ada, "SELECT previous_valid_until - rotated_at FROM webhook_signing_keys"
    )
    assert valid_until == timedelta(hours=24)
    with receiving() as receiver:
        insert_as(api_url, "authenticated", ada, receiver.url())
        run_once(env_for(db_url, tmp_path))
    [hit] = receiver.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert verifies(new, hit) and verifies(old, hit)


@pytest.mark.parametrize("url", MALFORMED, ids=lambda url: repr(url[:40]))
def test_a_malformed_callback_url_is_refused(db_url: str, api_url: str, url: str) -> None:
    user = add_user(db_url)
    rotate(api_url, user)
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
    rotate(api_url, user)
    request_id = insert_as(api_url, "authenticated", user, "https://hooks.example.com/dhgq")["id"]
    for _ in range(2):  # the second is refused: the request is cancelled already
        error_of(api_url, "authenticated", user, "SELECT public.dhgq_cancel_request_v1(%s)", (request_id,))
    assert request_status(db_url, str(request_id)) == "cancelled"
    assert [(d["outcome"], d["status"]) for d in deliveries(db_url, str(request_id))] == [("cancelled", "queued")]
    assert callback_columns(db_url, str(request_id))["callback_status"] == "queued"
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


# --- retries over hours, a final failure the user sees, redelivery on request -----------------------


def test_retries_follow_the_schedule_and_the_request_shows_when(db_url: str, tmp_path: Path) -> None:
    with receiving(503) as receiver:
        request_id, _ = add_request(db_url, callback_url=receiver.url())
        run_once(env_for(db_url, tmp_path, DHGQ_WEBHOOK_RETRY_SCHEDULE="[3600]"))
    assert len(receiver.hits) == 1
    shown = callback_columns(db_url, request_id)
    assert (shown["callback_status"], shown["callback_attempts"]) == ("retrying", 1)
    assert "HTTP 503" in shown["callback_error"] and "token" not in shown["callback_error"]
    waits = scalar(
        db_url,
        "SELECT extract(epoch FROM callback_next_attempt_at - now()) FROM processing_jobs WHERE id = %s",
        (request_id,),
    )
    assert 3500 < waits <= 3600
    [(scheduled,)] = rows(
        db_url, "SELECT scheduled_at - now() FROM dhgq.procrastinate_jobs WHERE queue_name = 'webhooks'"
    )
    assert timedelta(minutes=58) < scheduled <= timedelta(hours=1)


def test_the_default_schedule_spreads_retries_over_hours() -> None:
    settings = Settings(_env_file=None, database_url="postgresql://unused/none")  # type: ignore[call-arg]
    strategy = ScheduledRetry(settings.webhook_retry_schedule)
    waits = []
    for attempts in range(10):
        job = type("Job", (), {"attempts": attempts})()
        decision = strategy.get_retry_decision(exception=webhooks.ReceiverUnavailable("503"), job=job)  # type: ignore[arg-type]
        waits.append(None if decision is None else round((decision.retry_at - datetime.now(UTC)).total_seconds()))
    assert waits == [5, 300, 1800, 7200, 18000, 36000, 36000, None, None, None]
    refused = webhooks.ReceiverRefused("410")
    assert strategy.get_retry_decision(exception=refused, job=type("Job", (), {"attempts": 0})()) is None  # type: ignore[arg-type]


def test_a_final_failure_shows_on_the_request_and_the_user_asks_for_it_again(
    db_url: str, api_url: str, tmp_path: Path
) -> None:
    ada = add_user(db_url)
    secret = rotate(api_url, ada)
    env = env_for(db_url, tmp_path)
    with receiving(500, 500, 500) as receiver:
        request_id = str(insert_as(api_url, "authenticated", ada, receiver.url())["id"])
        run_once(env)
        assert len(receiver.hits) == 3  # the first attempt and the schedule's two retries
        [mine] = rows_or_refused(
            api_url,
            "authenticated",
            ada,
            "SELECT callback_status, callback_attempts, callback_error FROM processing_jobs WHERE id = %s",
            (request_id,),
        )
        assert mine[:2] == ("failed", 3) and "HTTP 500" in mine[2]
        # another user can neither see it nor ask for it again
        bob = add_user(db_url, "bob@example.com")
        theirs = error_of(api_url, "authenticated", bob, "SELECT public.dhgq_redeliver_webhook_v1(%s)", (request_id,))
        assert theirs is not None and theirs.sqlstate == "PT404"
        # Ada asks for it again: the same webhook-id, a fresh signature, delivered now
        with request(api_url, "authenticated", ada) as conn:
            again = conn.execute(
                "SELECT (r).callback_status FROM public.dhgq_redeliver_webhook_v1(%s) r", (request_id,)
            ).fetchone()
        assert again == ("queued",)
        busy = error_of(api_url, "authenticated", ada, "SELECT public.dhgq_redeliver_webhook_v1(%s)", (request_id,))
        assert busy is not None and busy.sqlstate == "PT409"  # queued already
        run_once(env)
    assert len(receiver.hits) == 4 and verifies(secret, receiver.hits[-1])
    assert {hit.headers["webhook-id"] for hit in receiver.hits} == {f"{request_id}:failed"}
    shown = callback_columns(db_url, request_id)
    assert (shown["callback_status"], shown["callback_attempts"], shown["callback_error"]) == ("delivered", 1, None)


def test_the_operator_sends_failed_deliveries_again(db_url: str, tmp_path: Path) -> None:
    env = env_for(db_url, tmp_path, DHGQ_WEBHOOK_RETRY_SCHEDULE="[]")
    with receiving(500, 500) as receiver:
        first, _ = add_request(db_url, callback_url=receiver.url())
        second, _ = add_request(db_url, "/nonexistent/dhgq-webhook-test/other.mp4", callback_url=receiver.url())
        run_once(env)
        listed = json.loads(dhgq_cli(env, "webhooks", "list", "--failed", "--json").stdout)["deliveries"]
        assert {d["request_id"] for d in listed} == {first, second}
        done = dhgq_cli(env, "webhooks", "redeliver", "--failed", "--json")
        assert [r["queued"] for r in json.loads(done.stdout)["redeliveries"]] == [True, True]
        again = dhgq_cli(env, "webhooks", "redeliver", first, check=False)  # queued already
        assert again.returncode == 1 and "queued already" in again.stdout
        run_once(env)
    assert len(receiver.hits) == 4
    assert {callback_columns(db_url, r)["callback_status"] for r in (first, second)} == {"delivered"}


def dhgq_cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "dhgq", *args], env=env, capture_output=True, text=True, timeout=120)
    assert not check or done.returncode == 0, done.stderr
    return done


# --- a slow receiver holds a slot for webhook_timeout at most ---------------------------------------


def trickle(seen: Seen, handler: Any) -> None:
    """Answer one byte every 0.2 s for a minute: each read is quick, the whole is not."""
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"." * 300:
        try:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
        except OSError:
            return
        time.sleep(0.2)


def test_a_trickling_receiver_is_cut_off_at_the_deadline() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url="postgresql://unused/none",
        webhook_secret=SECRET,
        allow_private_hosts=("127.0.0.1",),
        webhook_timeout=1.5,
    )
    with serving(trickle) as slow:
        delivery = webhooks.Delivery(str(uuid.uuid4()), "completed", slow.url("/hook"), {"status": "completed"})
        started = time.monotonic()
        with pytest.raises(webhooks.ReceiverUnavailable, match="no answer within 1.5 s"):
            webhooks.deliver(delivery, settings)
        assert time.monotonic() - started < 5  # not the minute the receiver would take
