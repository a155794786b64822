"""Media: each stage's realtime factor and peak RSS on a generated talk with the local engines,
and the whole pipeline through a real ``dhgq worker --once`` against the plain script."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from bench import media_stages
from bench.infra import Postgres, one
from bench.memory import MIB, PeakTreeMemory
from bench.report import Section, skipped, table, verdict
from dhgq.migrations import migrate

TITLE = "Media stages (local engines)"
LONG_MINUTES = 60  # the long talk: time and memory must stay linear in the length
TARGET_OVERHEAD = 0.05
TARGET_WORKER_MB = 1500  # issue 9: peak memory of a worker on a 10-minute talk
OPENAI_SECONDS = 60.0  # openai-whisper runs on this much of the talk
INSERT_SOURCE = "INSERT INTO sources_google (name, path, mime_type) VALUES (%s, %s, 'video/mp4') RETURNING id"
STAGE_ROWS = """SELECT stage, status, error, (result->>'stage_seconds')::float
                  FROM dhgq.audio_processing_stages WHERE source_id = %s"""
REPO = Path(__file__).resolve().parents[1]


def make_talk(workdir: Path, minutes: int, *, lines: int | None = None) -> Path:
    """A two-speaker talk as an MP4 with a video track (~1 minute of speech per repeat)."""
    from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue, to_mp4

    workdir.mkdir(parents=True, exist_ok=True)
    name = f"talk-{minutes}m" if lines is None else f"clip-{lines}"
    mp4 = workdir / f"{name}.mp4"
    if not mp4.exists():
        script = TWO_SPEAKER_SCRIPT if lines is None else TWO_SPEAKER_SCRIPT[:lines]
        reference = dialogue(script, workdir / f"{name}.wav", repeat=minutes if lines is None else 1)
        to_mp4(reference.audio, mp4)
    return mp4


def in_child(function: Any, *args: Any) -> dict[str, Any]:
    """Run one stage function in a fresh process; a failure comes back as {'skipped': reason}."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(function, *args).result()
        except ImportError as exc:
            return {"skipped": f"not available yet ({exc})"}
        except Exception as exc:  # noqa: BLE001 - the reason goes into the report
            return {"skipped": f"{type(exc).__name__}: {_last_line(str(exc))}"}


def run_section(pg: Postgres, workdir: Path, minutes: int) -> tuple[Section, dict[str, Any]]:
    try:
        talk = make_talk(workdir / "media", minutes)
    except Exception as exc:  # noqa: BLE001
        return skipped(TITLE, f"could not generate the talk: {exc}"), {}
    print(f"  talk: {talk}", file=sys.stderr)
    extracted = in_child(media_stages.extraction, str(talk), str(workdir / "media" / "extracted"))
    if "skipped" in extracted:
        return skipped(TITLE, f"extraction failed: {extracted['skipped']}"), {}
    audio = float(extracted["audio_seconds"])
    wav = extracted["wav"]
    results: list[tuple[str, dict[str, Any]]] = [("extraction (ffmpeg → 16 kHz WAV)", extracted)]
    fw = in_child(media_stages.transcription, wav, "faster-whisper")
    results.append(("transcription: faster-whisper tiny.en int8", fw))
    excerpt, excerpt_seconds = _excerpt(Path(wav), OPENAI_SECONDS)
    openai = in_child(media_stages.transcription, str(excerpt), "openai-whisper")
    openai["audio_seconds"] = excerpt_seconds
    results.append(
        (
            "transcription: openai-whisper tiny.en (converted checkpoint; first "
            f"{excerpt_seconds:.0f} s, beam 5 with word times is slow on CPU)",
            openai,
        )
    )
    results.append(("diarization: local", in_child(media_stages.diarization, wav)))
    if "transcript" in fw:
        results.append(("summarization: extractive", in_child(media_stages.summarization, fw["transcript"])))
    else:
        results.append(("summarization: extractive", {"skipped": "no transcript (transcription did not run)"}))
    rows = []
    for name, result in results:
        if "skipped" in result:
            rows.append([name, None, None, None, None, f"skipped: {result['skipped']}"])
            continue
        converted = result.get("convert_seconds")
        note = f"checkpoint conversion {converted:.1f} s" if converted is not None else ""
        rows.append(
            [
                name,
                result["seconds"],
                result.get("audio_seconds", audio) / result["seconds"],
                result["load_seconds"],
                result["peak_rss_mb"],
                note,
            ]
        )
    whole = _whole_pipeline(pg, workdir, talk)
    long_minutes = LONG_MINUTES if minutes >= 10 else 2 * minutes  # --smoke: a 2-minute "long" talk
    long_text, long_results = _long_talk(pg, workdir, long_minutes, audio, dict(results))
    body = "\n".join(
        [
            f"A generated two-speaker talk of {audio / 60:.1f} minutes (espeak-ng voices, MP4 with a video "
            "track). "
            "Each stage runs in a fresh process; realtime factor = seconds of audio / seconds of work (model "
            "loading excluded, shown apart); peak RSS is the process's (or its ffmpeg child's) largest.\n",
            table(("stage", "work s", "realtime factor", "model load s", "peak RSS MiB", "note"), rows),
            whole,
            long_text,
        ]
    )
    return Section(TITLE, body), {"stages": results, "long": long_results}


def _long_talk(
    pg: Postgres, workdir: Path, minutes: int, short_audio: float, short: dict[str, dict[str, Any]]
) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """The same measurements on a talk of ``minutes``: each stage's realtime factor and peak RSS
    next to the short talk's, and the peak memory of a ``dhgq worker --once`` that runs it."""
    heading = f"### A {minutes}-minute talk\n"
    try:
        talk = make_talk(workdir / "media", minutes)
    except Exception as exc:  # noqa: BLE001
        return f"{heading}\nSkipped: could not generate the talk: {exc}.\n", []
    print(f"  long talk: {talk}", file=sys.stderr)
    extracted = in_child(media_stages.extraction, str(talk), str(workdir / "media" / f"extracted-{minutes}m"))
    if "skipped" in extracted:
        return f"{heading}\nSkipped: extraction failed: {extracted['skipped']}.\n", []
    audio = float(extracted["audio_seconds"])
    wav = extracted["wav"]
    results: list[tuple[str, dict[str, Any]]] = [
        ("extraction (ffmpeg → 16 kHz WAV)", extracted),
        ("transcription: faster-whisper tiny.en int8", in_child(media_stages.transcription, wav, "faster-whisper")),
        ("diarization: local", in_child(media_stages.diarization, wav)),
    ]
    rows = []
    for name, result in results:
        before = short.get(name, {})
        factor = audio / result["seconds"] if "seconds" in result else None
        short_factor = before.get("audio_seconds", short_audio) / before["seconds"] if "seconds" in before else None
        note = f"skipped: {result['skipped']}" if "skipped" in result else ""
        if "speakers" in result:
            note = f"{result['speakers']} speaker(s) found"
        peaks = [result.get("peak_rss_mb"), before.get("peak_rss_mb")]
        rows.append([name, result.get("seconds"), factor, short_factor, *peaks, note])
    worker = _worker_run(pg, workdir, talk, f"media_long_{minutes}")
    if isinstance(worker, str):
        worker_text = f"`dhgq worker --once` on this talk did not complete the pipeline ({worker}).\n"
    else:
        memory, stages, seconds = worker
        worker_text = (
            f"`dhgq worker --once` on this talk: {seconds:,.0f} s wall, stage seconds "
            + ", ".join(f"{stage} {value:,.1f}" for stage, value in stages.items() if value is not None)
            + f". Peak memory of the worker and its {memory.most_processes - 1} child process(es): "
            f"{memory.peak_pss_mb:,.0f} MiB PSS, {memory.peak_rss_mb:,.0f} MiB summed RSS. Target under "
            f"{TARGET_WORKER_MB:,} MB: {verdict(memory.peak_pss_mb * MIB / 1e6 < TARGET_WORKER_MB)}.\n"
        )
    text = "\n".join(
        [
            heading,
            f"The talk repeated to {audio / 60:.1f} minutes, each stage in a fresh process as above; the short "
            "talk's figures alongside. Time and memory should grow linearly with the length: the realtime "
            "factor should hold and the peak stay flat where a stage streams its input.\n",
            table(
                (
                    "stage",
                    "work s",
                    "realtime factor",
                    "realtime factor, short talk",
                    "peak RSS MiB",
                    "peak RSS MiB, short talk",
                    "note",
                ),
                rows,
            ),
            worker_text,
        ]
    )
    return text, results


def _excerpt(wav: Path, seconds: float) -> tuple[Path, float]:
    """The first ``seconds`` of a WAV, for the engine too slow on CPU to run the whole talk."""
    import soundfile as sf

    data, rate = sf.read(str(wav))
    if len(data) <= seconds * rate:
        return wav, len(data) / rate
    out = wav.with_name(f"{wav.stem}-first{int(seconds)}s.wav")
    sf.write(str(out), data[: int(seconds * rate)], rate, subtype="PCM_16")
    return out, seconds


def _whole_pipeline(pg: Postgres, workdir: Path, talk: Path) -> str:
    """``dhgq worker --once`` on one source against the plain script, each a fresh process."""
    out_dir = workdir / "media" / "script"
    started = time.perf_counter()
    script = subprocess.run(
        [sys.executable, "-m", "bench.media_stages", str(talk), str(out_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=worker_env({}),
    )
    script_seconds = time.perf_counter() - started
    if script.returncode != 0:
        return f"Whole pipeline: skipped, the plain script failed: {_last_line(script.stderr)}.\n"
    script_stages = json.loads(script.stdout.strip().splitlines()[-1])["stages"]
    worker = _worker_run(pg, workdir, talk, "media")
    if isinstance(worker, str):
        return (
            f"Whole pipeline: the plain script took {script_seconds:.1f} s; `dhgq worker --once` did not "
            f"complete the pipeline ({worker}), so no overhead figure.\n"
        )
    memory, per_stage, worker_seconds = worker
    overhead = (worker_seconds - script_seconds) / script_seconds
    rows = [[stage, script_stages.get(stage), per_stage.get(stage)] for stage in script_stages]
    rows.append(["whole process, wall", script_seconds, worker_seconds])
    return "\n".join(
        [
            "Whole pipeline on the same talk, each run a fresh process that loads its models: the plain script "
            "(`python -m bench.media_stages`: the four functions one after another) against a real "
            "`dhgq worker --once` on a fresh database (stage rows, model host processes, transcription and "
            "diarization side by side). Stage seconds for dhgq are the stage rows' own.\n",
            table(("", "plain script s", "dhgq worker --once s"), rows),
            f"Pipeline overhead over the plain script: {overhead:+.1%} (target under {TARGET_OVERHEAD:.0%}), "
            f"{verdict(overhead < TARGET_OVERHEAD)}. `--once` goes round until no job is ready and waits 0.5 s "
            "between rounds, so each stage boundary can add up to half a second.\n",
            f"Peak memory of the worker on this talk (the worker process and its {memory.most_processes - 1} child "
            f"process(es), sampled every 0.2 s, default settings: {_slots()}): "
            f"{memory.peak_pss_mb:,.0f} MiB PSS, {memory.peak_rss_mb:,.0f} MiB summed RSS (RSS counts the pages the "
            f"processes share, torch's libraries among them, once per process). Target under "
            f"{TARGET_WORKER_MB:,} MB: {verdict(memory.peak_pss_mb * MIB / 1e6 < TARGET_WORKER_MB)}"
            f"{'' if memory.peak_rss_mb * MIB / 1e6 < TARGET_WORKER_MB else ' by PSS, missed by summed RSS'}.\n",
        ]
    )


def _worker_run(
    pg: Postgres, workdir: Path, talk: Path, database: str
) -> tuple[PeakTreeMemory, dict[str, float | None], float] | str:
    """``dhgq worker --once`` on one source in a fresh database: its tree's peak memory, the
    stage rows' seconds and the wall time; or why it did not complete the pipeline."""
    url = pg.database(database)
    migrate(url)  # migrations added since the run began (the worker refuses a schema behind the code)
    with psycopg.connect(url, autocommit=True) as conn:
        source_id = one(conn, INSERT_SOURCE, (talk.name, str(talk)))[0]
    env = worker_env({"DHGQ_DATABASE_URL": url, "DHGQ_HOME": str(workdir / "media" / "dhgq-home")})
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "dhgq", "worker", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    with PeakTreeMemory(process.pid) as memory:
        _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        stages = conn.execute(STAGE_ROWS, (source_id,)).fetchall()
    failed = [f"{stage}: {status} {error or ''}".strip() for stage, status, error, _ in stages if status != "completed"]
    if process.returncode != 0 or failed or len(stages) < 4:
        return "; ".join([*failed, f"exit code {process.returncode}: {_last_line(stderr)}"])
    return memory, {stage: value for stage, _, _, value in stages}, seconds


def _slots() -> str:
    from dhgq.settings import STAGES, Settings

    settings = Settings(database_url="postgresql://unused/none")
    return ", ".join(f"{stage} {settings.concurrency(stage)}" for stage in STAGES)


def worker_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a dhgq process run by the bench: no DHGQ_* of the caller's, offline models."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DHGQ_", "ANTHROPIC_", "MODAL_"))}
    return env | {"HF_HUB_OFFLINE": "1", "DHGQ_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)} | extra


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
