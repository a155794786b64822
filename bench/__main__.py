"""``python -m bench [--n 2000] [--smoke] [--only queue,dispatch,media,scale] [--out docs/benchmarks.md]``"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.infra import Postgres, postgres
from bench.machine import describe
from bench.report import Section

SECTIONS = ("queue", "dispatch", "media", "scale")
DEFAULT_SECTIONS = ("queue", "dispatch", "media")  # scale is long: ask for it with --only scale
TITLES = {
    "queue": "Queue overhead (no-op stages)",
    "dispatch": "Dispatch latency (idle workers)",
    "media": "Media stages (local engines)",
    "scale": "Scale (two worker processes)",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="pipelines per queue contender")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the figures")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma-separated sections of {','.join(SECTIONS)} (scale is opt-in)",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--window", type=int, default=32, help="pipelines in flight (queue overhead)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up pipelines (default n/10, at most 200)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="slots per queue for every contender (default: dhgq's per-queue defaults)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the queue contenders, in rotating order")
    parser.add_argument(
        "--no-diagnostic", action="store_true", help="skip the diagnostic run of dhgq with a monitor listening"
    )
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    parser.add_argument(
        "--skip-bullmq",
        action="store_true",
        help="leave the BullMQ contender out (the CI smoke run: it once hung on shutdown there)",
    )
    parser.add_argument("--dispatch-n", type=int, default=100, help="pipelines run one at a time")
    parser.add_argument("--media-minutes", type=int, default=10, help="length of the generated talk")
    parser.add_argument("--scale-n", type=int, default=1000, help="sources queued for the scale section")
    parser.add_argument("--scale-timeout", type=float, default=7200.0, help="seconds before scale gives up")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server, logs, media)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.smoke:
        args.n, args.window, args.warmup, args.pgbench_seconds, args.rounds = 20, 8, 5, 2, 1
        args.dispatch_n, args.media_minutes, args.scale_n = 5, 1, 20
    if args.warmup is None:
        args.warmup = min(200, args.n // 10)
    return args


def run(args: argparse.Namespace, pg: Postgres, workdir: Path) -> tuple[list[Section], bool]:
    from bench.procrastinate_contenders import default_concurrency

    concurrency = default_concurrency()
    if args.concurrency:
        concurrency = dict.fromkeys(concurrency, args.concurrency)
    jobs: dict[str, Callable[[], Section]] = {
        "queue": lambda: _queue(args, pg, workdir, concurrency),
        "dispatch": lambda: _dispatch(args, pg, workdir, concurrency),
        "media": lambda: _media(args, pg, workdir),
        "scale": lambda: _scale(args, pg, workdir),
    }
    sections, ok = [], True
    for name in SECTIONS:
        if name not in args.only:
            sections.append(Section(TITLES[name], f"_Not run this time (`--only {','.join(args.only)}`)._\n"))
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            sections.append(jobs[name]())
        except Exception as exc:  # noqa: BLE001 - one failed section must not lose the others' figures
            traceback.print_exc()
            sections.append(Section(TITLES[name], f"_Failed: {type(exc).__name__}: {exc}_\n"))
            ok = False
        print(f"bench: {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return sections, ok


def _queue(args: argparse.Namespace, pg: Postgres, workdir: Path, concurrency: dict[str, int]) -> Section:
    from bench import queue_overhead

    options = queue_overhead.Options(
        args.n,
        args.window,
        args.warmup,
        concurrency,
        args.pgbench_seconds,
        args.rounds,
        diagnostic=not args.no_diagnostic,
        skip_bullmq="left out of this run (--skip-bullmq)" if args.skip_bullmq else None,
    )
    return queue_overhead.run_section(pg, workdir, options)[0]


def _dispatch(args: argparse.Namespace, pg: Postgres, workdir: Path, concurrency: dict[str, int]) -> Section:
    from bench import dispatch

    return dispatch.run_section(pg, workdir, args.dispatch_n, concurrency)[0]


def _media(args: argparse.Namespace, pg: Postgres, workdir: Path) -> Section:
    from bench import media

    return media.run_section(pg, workdir, args.media_minutes)[0]


def _scale(args: argparse.Namespace, pg: Postgres, workdir: Path) -> Section:
    from bench import scale

    return scale.run_section(pg, workdir, args.scale_n, args.scale_timeout)[0]


def _load(values: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.1f}" for value in values)


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m bench", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="dhgq-bench-"))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    try:
        with postgres(workdir / "home") as pg:
            machine = describe(pg.admin_url())
            sections, ok = run(args, pg, workdir)
        machine.append(
            (
                "load average (1, 5, 15 min) at start → end",
                f"{_load(load_before)} → {_load(os.getloadavg())} (other work on the machine "
                "shares the cores with the run)",
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"bench: work directory kept at {workdir}", file=sys.stderr)
    report.write(args.out, report.document(command_line(argv), when, machine, sections))
    print(f"bench: wrote {args.out}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
