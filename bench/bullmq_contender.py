"""The seeds' design: BullMQ on Redis, four queues chained, and every stage transition written to
a status row in PostgreSQL with an UPSERT (queued, processing, completed), as the seeds' workers do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg_pool import AsyncConnectionPool

from bench.procrastinate_contenders import CHAIN, CHAIN_TERMINAL, SourceInserter
from bench.tracker import Tracker
from dhgq.settings import STAGES

# The seeds' tables, without dhgq's triggers: a source row and one status row per stage.
SCHEMA = """
CREATE TABLE sources_google (
    id uuid PRIMARY KEY, name text NOT NULL, path text NOT NULL, mime_type text,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE audio_processing_stages (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id uuid NOT NULL REFERENCES sources_google(id),
    stage text NOT NULL, status text NOT NULL, job_id text, queue_name text,
    started_at timestamptz, completed_at timestamptz, result jsonb, error text, attempts integer DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, stage));
CREATE INDEX ON audio_processing_stages (job_id);
CREATE INDEX ON audio_processing_stages (status);
"""
UPSERT_STATUS = """
INSERT INTO audio_processing_stages AS s
       (source_id, stage, status, job_id, queue_name, started_at, completed_at)
VALUES (%(source_id)s, %(stage)s, %(status)s, %(job_id)s, %(stage)s,
        CASE WHEN %(status)s = 'processing' THEN now() END, CASE WHEN %(status)s = 'completed' THEN now() END)
ON CONFLICT (source_id, stage) DO UPDATE
   SET status = EXCLUDED.status, job_id = coalesce(EXCLUDED.job_id, s.job_id),
       started_at = coalesce(EXCLUDED.started_at, s.started_at), completed_at = EXCLUDED.completed_at,
       updated_at = now()
"""


class BullmqContender:
    """Four BullMQ queues on a local Redis; status rows in PostgreSQL, one UPSERT per transition."""

    name = "BullMQ + PostgreSQL status UPSERTs (seeds)"
    key = "bullmq"
    terminal: tuple[str, ...] = CHAIN_TERMINAL

    def __init__(self, url: str, redis_url: str, concurrency: dict[str, int]) -> None:
        self.url = url
        self.redis_url = redis_url
        self.concurrency = concurrency

    @asynccontextmanager
    async def running(self, tracker: Tracker) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
        from bullmq import Queue, Worker

        pool = AsyncConnectionPool(
            self.url, min_size=1, max_size=sum(self.concurrency.values()) + 2, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(SCHEMA)
        queues: dict[str, Any] = {stage: Queue(stage, {"connection": self.redis_url}) for stage in STAGES}

        async def status(source_id: str, stage: str, state: str, job_id: Any = None) -> None:
            async with pool.connection() as conn:
                await conn.execute(
                    UPSERT_STATUS,
                    {
                        "source_id": source_id,
                        "stage": stage,
                        "status": state,
                        "job_id": None if job_id is None else str(job_id),
                    },
                )

        async def add(source_id: str, stage: str) -> None:
            job = await queues[stage].add(stage, {"source_id": source_id})
            await status(source_id, stage, "queued", job.id)

        def processor(stage: str) -> Callable[..., Awaitable[None]]:
            async def process(job: Any, token: str) -> None:
                source_id = job.data["source_id"]
                tracker.entered(source_id, stage)
                await status(source_id, stage, "processing")
                await status(source_id, stage, "completed")
                for stage_next in CHAIN[stage]:
                    await add(source_id, stage_next)
                tracker.completed(source_id, stage)

            return process

        workers = [
            Worker(stage, processor(stage), {"connection": self.redis_url, "concurrency": slots})
            for stage, slots in self.concurrency.items()
        ]

        sources = SourceInserter(self.url)
        await sources.open()

        async def launch(key: str) -> None:
            await sources.insert(key)
            await add(key, "extraction")

        try:
            await asyncio.sleep(0.2)
            yield launch
        finally:
            closing = asyncio.gather(
                *(worker.close() for worker in workers),
                *(queue.close() for queue in queues.values()),
                return_exceptions=True,
            )
            try:
                await asyncio.wait_for(closing, 30)
            except TimeoutError:  # the figures are taken; a worker that will not close is not one of them
                logging.getLogger("bench").warning("BullMQ workers did not close within 30 s")
            finally:
                await sources.close()
                await pool.close()
