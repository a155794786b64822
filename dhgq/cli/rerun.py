"""``dhgq rerun``: run a stage of some sources again, with what depends on it, or bring stale outputs up to date.

A re-run keeps what lies upstream of the stage (a diarization re-run neither extracts nor
transcribes again) and goes through ``dhgq.rerun_v1``: the stage is queued, what follows it
waits for it, and the earlier outputs stay readable until the new ones replace them (then they
are kept in ``dhgq.output_history`` until ``dhgq gc``). A re-run asked for by name computes; one
asked for by ``--stale`` may copy a current output of the same content (reuse).

``--where`` is the operator's: a boolean expression over ``public.sources_google``'s columns in a
small language (``dhgq/where_filter.py``: comparisons with constants, LIKE, IN, BETWEEN, IS NULL,
AND/OR/NOT, JSON keys), rebuilt as SQL from checked parts; no function, subquery or other table.
It still runs in a READ ONLY transaction, with a time limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

import psycopg
import typer
from psycopg import sql
from psycopg.types.json import Jsonb

from dhgq import sources
from dhgq.cli.common import JsonOption, connected, emit_json, settings_of, stderr, stdout
from dhgq.cli.pipeline import StageChoice, check_model
from dhgq.errors import PermanentError
from dhgq.queries import query
from dhgq.where_filter import compile_filter

WHERE_TIMEOUT = "60s"  # a --where expression that runs longer is cut off
NOT_READY = "55000"  # object_not_in_prerequisite_state: rerun_v1's "re-run upstream first"


@dataclass
class Outcome:
    """One source's re-run: what was asked, what was queued now, and why not when nothing was."""

    source_id: str
    name: str
    stages: list[str]
    status: str  # queued, planned (--dry-run), in flight, not ready, error
    queued: list[str] | None = None
    reasons: list[str] | None = None  # --stale: model_version, prompt_version
    error: str | None = None


def rerun(
    ctx: typer.Context,
    source: Annotated[str | None, typer.Argument(help="A source id, unique id prefix or name.")] = None,
    all_sources: Annotated[bool, typer.Option("--all", help="Every source.")] = False,
    where: Annotated[
        str | None,
        typer.Option(
            "--where",
            help="The sources for which this expression over public.sources_google's columns is true: "
            "comparisons with constants, LIKE, IN, BETWEEN, IS NULL, AND/OR/NOT, metadata->>'key', now(), "
            "interval '7 days'; e.g. \"created_at > '2026-01-01' AND name LIKE 'key%'\".",
        ),
    ] = None,
    stage: Annotated[
        StageChoice | None,
        typer.Option(
            "--stage",
            help="The stage to run again, with what depends on it (extraction: everything; "
            "transcription or diarization: the fan-in and summarization; summarization: itself).",
        ),
    ] = None,
    stale: Annotated[
        bool,
        typer.Option(
            "--stale", help="The stages whose outputs are stale (dhgq.stale_outputs), of all sources by default."
        ),
    ] = False,
    model: Annotated[
        str | None, typer.Option("--model", help="With --stage transcription: this Whisper model from now on.")
    ] = None,
    speakers: Annotated[
        int | None, typer.Option("--speakers", help="With --stage diarization: how many people speak, from now on.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would run again; queue nothing.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Run a stage of some sources again (and what depends on it), or only what is stale."""
    _check(source, all_sources, where, stage, stale, model, speakers)
    if model is not None:
        check_model(settings_of(ctx), model)
    options = {key: value for key, value in {"model": model, "num_speakers": speakers}.items() if value is not None}
    with connected(ctx) as conn:
        ids = _selected(conn, source, all_sources, where)
        outcomes = _planned(conn, ids, stage.value if stage else None, stale)
        if not dry_run:
            for outcome in outcomes:
                _rerun(conn, outcome, fresh=not stale, reason="stale" if stale else "manual", options=options)
    _report(outcomes, json_output, dry_run=dry_run)
    if any(o.status == "error" for o in outcomes) or (source is not None and not stale and not _all_went(outcomes)):
        raise typer.Exit(1)


def _check(
    source: str | None,
    all_sources: bool,
    where: str | None,
    stage: StageChoice | None,
    stale: bool,
    model: str | None,
    speakers: int | None,
) -> None:
    chosen = sum([source is not None, all_sources, where is not None])
    if chosen > 1 or (chosen == 0 and not stale):
        raise typer.BadParameter("give one of SOURCE, --all or --where (or --stale, alone or with one of them)")
    if stage is None and not stale:
        raise typer.BadParameter("give the --stage to run again (or --stale)")
    if stale and (model is not None or speakers is not None):
        raise typer.BadParameter("--stale refreshes outputs with the current versions: no --model or --speakers")
    if model is not None and stage not in (StageChoice.transcription, StageChoice.extraction):
        raise typer.BadParameter("--model is the Whisper model: give it with --stage transcription")
    if speakers is not None and stage not in (StageChoice.diarization, StageChoice.extraction):
        raise typer.BadParameter("--speakers steers the diarization: give it with --stage diarization")


def _all_went(outcomes: list[Outcome]) -> bool:
    return all(o.status in ("queued", "planned") for o in outcomes)


def _selected(conn: psycopg.Connection, source: str | None, all_sources: bool, where: str | None) -> list[str] | None:
    """The chosen sources' ids; None for "every source" (--stale alone)."""
    if source is not None:
        return [str(sources.resolve(conn, source)["id"])]
    if all_sources:
        return [row[0] for row in conn.execute(query("rerun_all_sources"))]
    if where is not None:
        return where_ids(conn, where)
    return None


def where_ids(conn: psycopg.Connection, expression: str) -> list[str]:
    """The ids of the sources ``expression`` is true for (see dhgq/where_filter.py), in a READ ONLY transaction."""
    columns = {row[0] for row in conn.execute(query("rerun_where_columns"))}
    condition = compile_filter(expression, columns)  # PermanentError for anything outside the language
    statement = sql.SQL(
        "SELECT id::text FROM public.sources_google WHERE NOT is_deleted AND ({}) ORDER BY created_at, id"
    ).format(condition)
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(WHERE_TIMEOUT)))
            rows = conn.execute(statement).fetchall()
    except psycopg.Error as exc:
        raise PermanentError(f"--where {expression!r}: {_first_line(exc)}") from None
    return [row[0] for row in rows]


def _planned(conn: psycopg.Connection, ids: list[str] | None, stage: str | None, stale: bool) -> list[Outcome]:
    """What each chosen source would run again: the stage given, or (--stale) its stale stages."""
    if stale:
        rows = conn.execute(query("rerun_stale"), {"ids": ids, "stage": stage}).fetchall()
        planned = [Outcome(row[0], "", sorted(row[1], key=_order), "planned", reasons=sorted(row[2])) for row in rows]
    else:
        assert ids is not None and stage is not None
        planned = [Outcome(source_id, "", [stage], "planned") for source_id in ids]
    names: dict[str, str] = dict(
        conn.execute(query("rerun_source_names"), {"ids": [o.source_id for o in planned]}).fetchall()
    )
    for outcome in planned:
        outcome.name = names.get(outcome.source_id, "")
    return planned


def _order(stage: str) -> int:
    return [c.value for c in StageChoice].index(stage)


def _rerun(conn: psycopg.Connection, outcome: Outcome, *, fresh: bool, reason: str, options: dict[str, Any]) -> None:
    """Queue one source's re-run (its own transaction) and write down what happened."""
    params = {
        "source_id": outcome.source_id,
        "stages": outcome.stages,
        "fresh": fresh,
        "reason": reason,
        "options": Jsonb(options),
    }
    try:
        row = conn.execute(query("rerun_source"), params).fetchone()
    except psycopg.Error as exc:
        outcome.status = "not ready" if exc.sqlstate == NOT_READY else "error"
        outcome.error = _first_line(exc)
        return
    queued = row[0] if row else None
    outcome.queued = list(queued) if queued is not None else None
    outcome.status = "queued" if queued is not None else "in flight"


def _first_line(exc: psycopg.Error) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _report(outcomes: list[Outcome], json_output: bool, *, dry_run: bool = False) -> None:
    if json_output:
        count = {"planned": len(outcomes)} if dry_run else {"queued": sum(o.status == "queued" for o in outcomes)}
        emit_json({"reruns": [asdict(o) for o in outcomes], "dry_run": dry_run, **count})
        return
    if not outcomes:
        stderr.print("nothing to run again")
    for o in outcomes:
        what = ", ".join(o.queued if o.queued else o.stages)
        why = f" ({', '.join(o.reasons)})" if o.reasons else ""
        detail = f": {o.error}" if o.error else ""
        stdout.print(
            f"{o.source_id[:8]}  {o.status:<10} {what}{why}  {o.name}{detail}", highlight=False, soft_wrap=True
        )
    if dry_run:  # nothing was queued: say what would run, never "queued"
        stderr.print(f"{len(outcomes)} source(s) would run again (--dry-run: nothing was changed)")
        return
    queued = sum(o.status == "queued" for o in outcomes)
    stderr.print(f"{queued} of {len(outcomes)} source(s) queued again")
