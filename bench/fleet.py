"""``python -m bench.fleet [--minutes 10,60] [--processes 1,2,4] [--pipelines 400] [--out docs/benchmarks.md]``

Many machines sharing one database: what the artifact hop costs a stage, and how the queue's throughput
moves with the number of worker processes.

- **Artifact hop.** A generated talk is extracted (a fresh process, as a stage runs it); its WAV and
  compact copy go into the shared artifact store (the real Supabase Storage server, through a
  Supabase-like gateway, in parts of ``artifact_part_bytes``); a second "machine" (another cache
  directory) fetches the WAV, checked by hash, and transcription and diarization run on that fetched
  file (fresh processes). Reported: upload time against extraction time, fetch time against each
  model stage's time, a second fetch on the same machine (the cache), signing the Modal URLs, and
  what the embedded default's local store adds to extraction (hashing the files it keeps in place).
- **Queue throughput.** N four-stage pipelines of no-op stages (dhgq's real plumbing: triggers, stage
  rows, fan-in) inserted in one statement, served by 1, 2 or 4 worker processes on one PostgreSQL
  server, timed from the INSERT to the last summary row.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from pydantic import SecretStr

from bench import media_stages
from bench.infra import postgres
from bench.machine import describe
from bench.media import in_child, make_talk
from bench.report import table
from dhgq.artifacts import store_for
from dhgq.settings import Settings

BEGIN, END = "<!-- fleet: begin -->", "<!-- fleet: end -->"
REPO = Path(__file__).resolve().parents[1]
PART_BYTES = 32 * 1024**2  # the default part size
INSERT_PIPELINES = (
    "INSERT INTO sources_google (name, path, mime_type) "
    "SELECT 'noop-' || i, '/bench/noop-' || i || '.mp4', 'video/mp4' FROM generate_series(1, %s) AS i"
)
DONE = "SELECT count(*) FROM dhgq.audio_processing_stages WHERE stage = 'summarization' AND status = 'completed'"
LATENCIES = """SELECT extract(epoch FROM st.completed_at - src.created_at)::float8
                 FROM dhgq.audio_processing_stages st JOIN sources_google src ON src.id = st.source_id
                WHERE st.stage = 'summarization' AND st.status = 'completed'"""


@dataclass
class Hop:
    minutes: float
    wav_mb: float
    parts: int
    extraction_s: float
    local_hash_s: float
    upload_s: float
    fetch_s: float
    cached_fetch_s: float
    sign_s: float
    transcription_s: float
    diarization_s: float


@dataclass
class Throughput:
    processes: int
    pipelines: int
    seconds: float
    p50_s: float
    p95_s: float

    @property
    def rate(self) -> float:
        return self.pipelines / self.seconds


# -- the artifact hop --------------------------------------------------------------------------------


@contextmanager
def storage_gateway(workdir: Path) -> Iterator[tuple[str, str, str]]:
    """The real Storage server on a hosted-like database, behind a gateway: (gateway URL, service key, db URL)."""
    from dhgq.embedded import EmbeddedServer
    from tests.conftest import PROJECT_PASSWORD, SUPPORT, database_name, new_database, role_url
    from tests.support.gateway import Gateway
    from tests.support.storage_server import running_storage

    server = EmbeddedServer(workdir / "pg", superuser="supabase_admin")
    info = server.start()
    try:
        roles = (SUPPORT / "hosted_roles.sql").read_text(encoding="utf-8")
        with psycopg.connect(info.url("postgres"), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL(roles).format(password=psycopg.sql.Literal(PROJECT_PASSWORD)))  # type: ignore[arg-type]
        url = new_database(info, None)
        name = database_name(url)
        with running_storage(
            project_url=url,
            superuser_url=info.url(name),
            authenticator_url=role_url(info, name, "authenticator"),
            workdir=workdir / "storage",
        ) as stack:
            with Gateway(
                storage_url=stack.storage_url, authenticator_url=stack.authenticator_url, jwt_secret=stack.jwt_secret
            ) as gateway:
                yield gateway.url, stack.service_key(), url
    finally:
        server.stop()


def measure_hop(workdir: Path, minutes: int, gateway: str, service_key: str, db_url: str) -> Hop:
    talk = make_talk(workdir / "media", minutes)
    extracted = in_child(media_stages.extraction, str(talk), str(workdir / f"extracted-{minutes}"))
    if "skipped" in extracted:
        raise RuntimeError(f"extraction failed: {extracted['skipped']}")
    wav = Path(extracted["wav"])
    compact = next(wav.parent.glob("audio.opus"), None)

    def machine(name: str, backend: str) -> Settings:
        return Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=SecretStr(db_url),
            home=workdir / f"{name}-{minutes}",
            host_name=name,
            supabase_url=gateway,
            supabase_service_key=SecretStr(service_key),
            artifact_store=backend,  # type: ignore[arg-type]
            artifact_part_bytes=PART_BYTES,
        )

    local = store_for(machine("single", "local"))
    started = time.perf_counter()
    local.put("s", "audio", wav, "audio/wav")
    if compact is not None:
        local.put("s", "compact", compact, "audio/ogg")
    local_hash_s = time.perf_counter() - started

    a, b = store_for(machine("a", "storage")), store_for(machine("b", "storage"))
    source_id = str(uuid.uuid4())
    with a.staging(source_id) as folder:
        folder.mkdir(parents=True, exist_ok=True)
        staged = [shutil.copy2(wav, folder / wav.name)] + (
            [shutil.copy2(compact, folder / compact.name)] if compact else []
        )
        started = time.perf_counter()
        artifact = a.put(source_id, "audio", Path(staged[0]), "audio/wav")
        compact_artifact = a.put(source_id, "compact", Path(staged[1]), "audio/ogg") if compact else artifact
        upload_s = time.perf_counter() - started
    started = time.perf_counter()
    with b.local_file(artifact) as fetched:
        fetch_s = time.perf_counter() - started
        started = time.perf_counter()
        with b.local_file(artifact):
            cached_fetch_s = time.perf_counter() - started
        started = time.perf_counter()
        a.signed_urls(compact_artifact, 3600)
        sign_s = time.perf_counter() - started
        transcribed = in_child(media_stages.transcription, str(fetched), "faster-whisper")
        diarized = in_child(media_stages.diarization, str(fetched))
    return Hop(
        minutes=float(extracted["audio_seconds"]) / 60,
        wav_mb=wav.stat().st_size / 1e6,
        parts=artifact.parts,
        extraction_s=float(extracted["seconds"]),
        local_hash_s=local_hash_s,
        upload_s=upload_s,
        fetch_s=fetch_s,
        cached_fetch_s=cached_fetch_s,
        sign_s=sign_s,
        transcription_s=float(transcribed.get("seconds", float("nan"))),
        diarization_s=float(diarized.get("seconds", float("nan"))),
    )


# -- queue throughput --------------------------------------------------------------------------------


def serve(url: str, home: str) -> None:
    """In a worker process: serve the four stage queues with no-op stages until SIGTERM."""
    from bench.procrastinate_contenders import DhgqContender, default_concurrency
    from bench.tracker import Tracker

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with DhgqContender(url, Path(home), default_concurrency()).running(Tracker(("summarization",))):
            await stop.wait()

    asyncio.run(run())


def measure_throughput(workdir: Path, processes_list: list[int], pipelines: int) -> list[Throughput]:
    results = []
    with postgres(workdir / "queue-pg") as pg:
        for processes in processes_list:
            url = pg.database(f"fleet{processes}")
            workers = [
                subprocess.Popen(
                    [sys.executable, "-m", "bench.fleet", "--serve", url, str(workdir / f"w{processes}-{i}")], cwd=REPO
                )
                for i in range(processes)
            ]
            try:
                _wait_for_workers(url, 4 * processes)
                with psycopg.connect(url, autocommit=True) as conn:
                    started = time.perf_counter()
                    conn.execute(INSERT_PIPELINES, (pipelines,))
                    while (conn.execute(DONE).fetchone() or (0,))[0] < pipelines:
                        time.sleep(0.05)
                    seconds = time.perf_counter() - started
                    latencies = sorted(row[0] for row in conn.execute(LATENCIES))
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.wait(timeout=60)
            q = statistics.quantiles(latencies, n=20)
            results.append(Throughput(processes, pipelines, seconds, statistics.median(latencies), q[18]))
            print(f"  {processes} process(es): {pipelines / seconds:.1f} pipelines/s", file=sys.stderr)
    return results


def _wait_for_workers(url: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if (conn.execute("SELECT count(*) FROM dhgq.procrastinate_workers").fetchone() or (0,))[0] >= count:
                return
            time.sleep(0.1)
    raise RuntimeError(f"{count} queue workers did not register within {timeout:.0f} s")


# -- the report --------------------------------------------------------------------------------------


def section(hops: list[Hop], throughput: list[Throughput], machine: list[tuple[str, str]]) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cpu = next((value for key, value in machine if key == "CPU"), "?")
    cores = next((value for key, value in machine if key.startswith("CPU cores")), "?")
    hop_rows = [
        [
            f"{h.minutes:.1f} min ({h.wav_mb:.0f} MB WAV, {h.parts} part{'s' if h.parts != 1 else ''})",
            h.extraction_s,
            h.upload_s,
            f"{h.upload_s / h.extraction_s:.2f}×",
            h.fetch_s,
            h.transcription_s,
            f"{h.fetch_s / h.transcription_s:.1%}",
            h.diarization_s,
            f"{h.fetch_s / h.diarization_s:.1%}",
            f"{h.cached_fetch_s * 1000:.1f} ms",
            f"{h.sign_s * 1000:.0f} ms",
            f"{h.local_hash_s:.2f} s ({h.local_hash_s / h.extraction_s:.1%})",
        ]
        for h in hops
    ]
    base = throughput[0].rate if throughput else 1.0
    queue_rows = [
        [t.processes, t.pipelines, t.seconds, t.rate, f"{t.rate / base:.2f}×", t.p50_s, t.p95_s] for t in throughput
    ]
    lines = [
        BEGIN,
        "## Many machines: the artifact hop and worker processes\n",
        f"`python -m bench.fleet` on {when} ({cpu}, {cores} cores), the real Supabase Storage server on loopback. "
        "A stage on another machine pays the hop: the extraction machine uploads its WAV and compact copy, a model "
        "machine downloads the WAV once into its cache (checked by hash) and both model stages there read it; on "
        "Modal the functions fetch the compact copy by signed URLs instead. Loopback has no network latency: on a "
        "real network the hop grows with the WAV's size over the bandwidth (115 MB an hour of audio).\n",
        table(
            (
                "talk",
                "extraction s",
                "upload s",
                "upload / extraction",
                "fetch s",
                "transcription s",
                "fetch / transcription",
                "diarization s",
                "fetch / diarization",
                "2nd fetch (cache)",
                "sign Modal URLs",
                "local store: hash (of extraction)",
            ),
            hop_rows,
        ),
        "The embedded single-machine default uploads and downloads nothing: the model stages read the work dir's "
        "files in place; what it adds is the hash of the files extraction keeps (last column).\n",
        "Queue throughput on no-op stages (dhgq's triggers, stage rows and fan-in), N pipelines inserted in one "
        "statement, each worker process with the default per-queue concurrency, one PostgreSQL server on the same "
        "machine:\n",
        table(
            ("worker processes", "pipelines", "seconds", "pipelines/s", "vs 1 process", "p50 s", "p95 s"), queue_rows
        ),
        END,
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, text: str) -> None:
    import re

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--minutes", default="10,60", help="talk lengths for the artifact hop")
    parser.add_argument("--processes", default="1,2,4", help="worker process counts for the queue")
    parser.add_argument("--pipelines", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--serve", nargs=2, metavar=("URL", "HOME"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(*args.serve)
    minutes = [int(m) for m in args.minutes.split(",") if m]
    processes = [int(p) for p in args.processes.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="dhgq-bench-fleet-") as folder:
        workdir = Path(folder)
        hops: list[Hop] = []
        if minutes:
            with storage_gateway(workdir) as (gateway, service_key, db_url):
                for m in minutes:
                    print(f"artifact hop: a {m}-minute talk", file=sys.stderr)
                    hops.append(measure_hop(workdir, m, gateway, service_key, db_url))
        throughput = measure_throughput(workdir, processes, args.pipelines) if processes else []
    text = section(hops, throughput, describe(None))
    print(text)
    if args.out is not None:
        replace_section(args.out, text)
        print(f"wrote the fleet section to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
