"""The client SDK for Supabase apps (the seeds' AudioProcessingService), on supabase-py.

Everything runs as the signed-in user, with the project's anon key and the user's own session,
exactly as a web or mobile app calls Supabase: row-level security decides what they see (their
own requests and results) and Storage's policies where they may upload (their own folder).
Nothing here needs the service key or a database connection.

    from supabase import create_client
    from dhgq.client import DhgqClient

    supabase = create_client(SUPABASE_URL, SUPABASE_ANON_KEY)
    supabase.auth.sign_in_with_password({"email": ..., "password": ...})
    dhgq = DhgqClient(supabase)
    job = dhgq.submit("keynote.mp4", {"language": "en", "num_speakers": 2})
    job = dhgq.wait(job.id)                       # Realtime where the project has it, else polling
    results = dhgq.results(job.id)                # speaker-labelled transcript and summary
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from supabase import Client

DONE = frozenset({"completed", "failed", "cancelled"})
PAGE = 1000  # rows per request: Supabase's Data API returns at most 1,000 by default
JOB_COLUMNS = (
    "id,status,file_path,options,source_id,error,result,created_at,updated_at,completed_at,"
    "callback_status,callback_attempts,callback_error"
)


class DhgqClientError(Exception):
    """A request the client could not make: not signed in, no such job, an upload refused."""


@dataclass(frozen=True)
class Job:
    """A processing request, as its owner sees it."""

    id: str
    status: str  # queued, processing, completed, failed, cancelled
    file_path: str
    options: dict[str, Any]
    source_id: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: str
    completed_at: str | None
    callback_status: str | None = None  # the webhook's: queued, delivering, retrying, delivered, failed
    callback_error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=str(row["id"]),
            status=row["status"],
            file_path=row["file_path"],
            options=row.get("options") or {},
            source_id=str(row["source_id"]) if row.get("source_id") else None,
            error=row.get("error"),
            result=row.get("result"),
            created_at=str(row.get("created_at") or ""),
            completed_at=str(row["completed_at"]) if row.get("completed_at") else None,
            callback_status=row.get("callback_status"),
            callback_error=row.get("callback_error"),
        )


@dataclass(frozen=True)
class WordTiming:
    """One word of an utterance: when it was said (seconds from the start) and how sure Whisper was of it."""

    start: float
    end: float
    text: str
    probability: float | None = None


@dataclass(frozen=True)
class Utterance:
    """One transcript segment: when, who (SPEAKER_1, or the name given to them), what, and each word's timing."""

    start: float
    end: float
    speaker: str | None
    text: str
    words: list[WordTiming] = field(default_factory=list)


@dataclass(frozen=True)
class Results:
    """What a completed request produced."""

    job: Job
    utterances: list[Utterance]
    language: str | None
    summary: dict[str, Any] | None
    outputs: dict[str, str] = field(default_factory=dict)  # export format -> storage:// URI
    language_probability: float | None = None  # how sure Whisper was of a language it detected (None: given)

    @property
    def text(self) -> str:
        return " ".join(u.text for u in self.utterances)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances if u.speaker})


class DhgqClient:
    """dhgq for one signed-in user of a Supabase app."""

    def __init__(self, supabase: Client, *, bucket: str = "media") -> None:
        self.supabase = supabase
        self.bucket = bucket

    @property
    def user_id(self) -> str:
        """The signed-in user's id, from the access token the client sends."""
        header = str(self.supabase.options.headers.get("Authorization", ""))
        claims = _jwt_claims(header.removeprefix("Bearer ").strip())
        if claims.get("role") != "authenticated" or not claims.get("sub"):
            raise DhgqClientError("not signed in: sign in with supabase.auth first (the anon key alone sees nothing)")
        return str(claims["sub"])

    # --- requests -------------------------------------------------------------------------------

    def submit(
        self,
        path_or_key: str | Path,
        options: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Upload a local file into the user's folder (or name an object already there), then request it.

        A local file goes to ``<user id>/<key or its name>`` in the bucket (replacing what is there);
        anything that is not a local file is taken as a key, under the user's folder when it is not yet.
        ``options``: model, language, num_speakers, min_speakers, max_speakers (checked by the database).
        """
        local = Path(path_or_key)
        if local.is_file():
            object_key = self._own_key(key or local.name)
            self._upload(local, object_key)
        else:
            object_key = self._own_key(str(path_or_key))
        row: dict[str, Any] = {"file_path": object_key, "options": options or {}}
        if callback_url is not None:
            row["callback_url"] = callback_url
        inserted = self.supabase.table("processing_jobs").insert(row).execute()
        return Job.from_row(_one(inserted.data, "the request was not created"))

    def status(self, job_id: str) -> Job:
        rows = _rows(self.supabase.table("processing_jobs").select(JOB_COLUMNS).eq("id", job_id).execute())
        return Job.from_row(_one(rows, f"no request {job_id} of yours"))

    def list_jobs(self, status: str | None = None, *, limit: int = 100) -> list[Job]:
        """The user's requests, newest first."""
        query = self.supabase.table("processing_jobs").select(JOB_COLUMNS).order("created_at", desc=True).limit(limit)
        if status is not None:
            query = query.eq("status", status)
        return [Job.from_row(row) for row in _rows(query.execute())]

    def cancel(self, job_id: str) -> Job:
        return Job.from_row(_row(self.supabase.rpc("dhgq_cancel_request_v1", {"request_id": job_id}).execute().data))

    def retry(self, job_id: str) -> Job:
        return Job.from_row(_row(self.supabase.rpc("dhgq_retry_request_v1", {"request_id": job_id}).execute().data))

    # --- webhooks -------------------------------------------------------------------------------

    def rotate_webhook_secret(self) -> str:
        """A new webhook signing secret (``whsec_...``), shown this once: keep it where your receiver reads it.

        Your requests' callbacks are signed with it (Standard Webhooks); the previous one signs too for a day.
        """
        return str(self.supabase.rpc("dhgq_rotate_webhook_secret_v1", {}).execute().data)

    def redeliver_webhook(self, job_id: str) -> Job:
        """Send a request's latest webhook again (once it was delivered or finally failed)."""
        rpc = self.supabase.rpc("dhgq_redeliver_webhook_v1", {"request_id": job_id})
        return Job.from_row(_row(rpc.execute().data))

    # --- waiting --------------------------------------------------------------------------------

    def wait(self, job_id: str, *, timeout: float | None = None, realtime: bool = True) -> Job:
        """Block until the request completes, fails or is cancelled; TimeoutError after ``timeout`` seconds.

        Subscribes to the request's row through Supabase Realtime where the project has it (the
        table is in its publication), re-reading the row now and then in case an event is lost;
        where Realtime cannot be reached, polls with backoff (0.5 s doubling to 10 s).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.status(job_id)
        if job.done:
            return job
        if realtime:
            try:
                return asyncio.run(self._wait_realtime(job_id, deadline))
            except RealtimeUnavailable:
                pass
        return self._wait_polling(job_id, deadline)

    def _wait_polling(self, job_id: str, deadline: float | None) -> Job:
        delay = 0.5
        while True:
            job = self.status(job_id)
            if job.done:
                return job
            _sleep_until(deadline, delay, job_id)
            delay = min(delay * 2, 10.0)

    async def _wait_realtime(self, job_id: str, deadline: float | None) -> Job:
        from realtime import AsyncRealtimeClient
        from realtime.types import RealtimePostgresChangesListenEvent

        token = str(self.supabase.options.headers.get("Authorization", "")).removeprefix("Bearer ").strip()
        socket = AsyncRealtimeClient(str(self.supabase.realtime_url), self.supabase.supabase_key, auto_reconnect=False)
        changed = asyncio.Event()
        try:
            await asyncio.wait_for(socket.connect(), 5.0)
            await socket.set_auth(token)
            channel = socket.channel(f"dhgq-job-{job_id}")
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.Update,
                schema="public",
                table="processing_jobs",
                filter=f"id=eq.{job_id}",
                callback=lambda _payload: changed.set(),
            )
            await asyncio.wait_for(channel.subscribe(), 5.0)
        except Exception as exc:  # no Realtime here (a self-hosted API without it, a network that blocks it)
            raise RealtimeUnavailable(str(exc)) from exc
        try:
            while True:
                job = await asyncio.to_thread(self.status, job_id)
                if job.done:
                    return job
                changed.clear()
                wait = 15.0 if deadline is None else min(15.0, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"request {job_id} is still {job.status}")
                try:
                    await asyncio.wait_for(changed.wait(), wait)
                except TimeoutError:
                    pass  # re-read the row anyway: an event may have been missed
        finally:
            await socket.close()

    # --- results --------------------------------------------------------------------------------

    def results(self, job_id: str) -> Results:
        """The speaker-labelled transcript (with timestamps) and the summary of a completed request."""
        job = self.status(job_id)
        if job.status != "completed" or job.source_id is None:
            raise DhgqClientError(f"request {job_id} is {job.status}: results come when it is completed")
        documents = {
            row["content_type"]: row
            for row in _rows(
                self.supabase.table("expert_documents")
                .select("id,content_type,language,processed_content")
                .eq("source_id", job.source_id)
                .execute()
            )
        }
        transcript = documents.get("transcript")
        if transcript is None:
            raise DhgqClientError(f"request {job_id} has no transcript")
        names = self._speaker_names(job.source_id)
        utterances = [
            Utterance(
                float(s["start_time"]),
                float(s["end_time"]),
                names.get(s["speaker_id"]),
                s["text"],
                _words((s.get("metadata") or {}).get("words")),
            )
            for s in self._segments(transcript["id"])
        ]
        summary = documents.get("summary")
        detected = (transcript.get("processed_content") or {}).get("language_probability")
        return Results(
            job,
            utterances,
            transcript.get("language"),
            _shown_summary(summary["processed_content"]) if summary else None,
            self._outputs(job.source_id),
            float(detected) if detected is not None else None,
        )

    def _segments(self, document_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = _rows(
                self.supabase.table("audio_segments")
                .select("start_time,end_time,text,speaker_id,metadata")
                .eq("expert_document_id", document_id)
                .order("start_time")
                .limit(PAGE)
                .offset(len(rows))
                .execute()
            )
            rows += page
            if len(page) < PAGE:
                return rows

    def _speaker_names(self, source_id: str) -> dict[str, str]:
        rows = (
            self.supabase.table("speaker_profiles").select("id,label,display_name").eq("source_id", source_id).execute()
        )
        return {row["id"]: row.get("display_name") or row["label"] for row in _rows(rows)}

    def _outputs(self, source_id: str) -> dict[str, str]:
        rows = _rows(self.supabase.table("sources_google").select("metadata").eq("id", source_id).execute())
        return dict((rows[0].get("metadata") or {}).get("outputs") or {}) if rows else {}

    # --- storage --------------------------------------------------------------------------------

    def _own_key(self, key: str) -> str:
        """``key`` in the user's own folder (the only one Storage and the database let them use)."""
        user = self.user_id
        clean = str(PurePosixPath(key.lstrip("/")))
        return clean if clean.startswith(f"{user}/") else f"{user}/{clean}"

    def _upload(self, path: Path, key: str) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            with path.open("rb") as handle:
                # {"dhgq": false}: this upload starts no request by itself (processing on upload); submit() makes
                # its own, with the options and callback it was given
                self.supabase.storage.from_(self.bucket).upload(
                    key, handle.read(), {"content-type": content_type, "upsert": "true", "metadata": {"dhgq": False}}
                )
        except Exception as exc:  # storage3's StorageApiError, or the network
            raise DhgqClientError(f"uploading {path.name} to {self.bucket}/{key} failed: {exc}") from exc


class RealtimeUnavailable(Exception):
    """Realtime could not be reached; waiting falls back to polling."""


def _jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: only to learn who the client says it is (the server verifies)."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


def _rows(response: Any) -> list[dict[str, Any]]:
    """A Data API response's rows (postgrest-py types them as any JSON)."""
    return [dict(row) for row in (response.data or [])]


def _one(rows: Any, missing: str) -> dict[str, Any]:
    if not rows:
        raise DhgqClientError(missing)
    return dict(rows[0])


def _row(data: Any) -> dict[str, Any]:
    """An RPC's composite result: an object, or a one-row list, depending on the server."""
    return dict(data[0]) if isinstance(data, list) else dict(data)


def _words(stored: Any) -> list[WordTiming]:
    """A segment's words as the transcription stored them (audio_segments.metadata.words)."""
    if not isinstance(stored, list):
        return []
    return [
        WordTiming(float(w["start"]), float(w["end"]), str(w.get("text", "")), w.get("probability"))
        for w in stored
        if isinstance(w, dict) and w.get("start") is not None and w.get("end") is not None
    ]


def _shown_summary(content: dict[str, Any] | None) -> dict[str, Any] | None:
    if not content:
        return None
    return {key: content.get(key) for key in ("summary", "key_points", "topics", "document_type", "method")}


def _sleep_until(deadline: float | None, delay: float, job_id: str) -> None:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request {job_id} did not finish in time")
        delay = min(delay, left)
    time.sleep(delay)
