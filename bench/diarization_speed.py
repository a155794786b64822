"""``python -m bench.diarization_speed [--minutes 10 60] [--against DIR] [--rounds 2] [--out docs/benchmarks.md]``

Diarization alone on the generated two-speaker talk (bench/media.py's talk: the tests' dialogue
repeated to the length), each run in a fresh process that loads the models, as ``python -m bench
--only media`` measures it: realtime factor (audio seconds over work seconds, model loading
apart) and the process's peak RSS. With ``--against DIR`` (a source tree of another commit, e.g.
from ``git archive``), the two trees run alternately on the same talk, round after round, so a
busy shared machine weighs on both alike; the table gives each one's best round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- diarization speed: begin -->", "<!-- diarization speed: end -->"
CHILD = (
    "import json, sys; from bench.media_stages import diarization; "
    "print('RESULT ' + json.dumps(diarization(sys.argv[1])))"
)


@dataclass
class Run:
    tree: str
    minutes: int
    audio_seconds: float
    seconds: float
    peak_rss_mb: float
    speakers: int

    @property
    def factor(self) -> float:
        return self.audio_seconds / self.seconds


def talk(folder: Path, minutes: int) -> tuple[Path, float]:
    """The two-speaker talk as a 16 kHz WAV, and its length in seconds."""
    import soundfile as sf

    sys.path.insert(0, str(REPO))
    from tests.support.speech import TWO_SPEAKER_SCRIPT, dialogue

    wav = folder / f"talk-{minutes}m.wav"
    if not wav.exists():
        dialogue(TWO_SPEAKER_SCRIPT, wav, repeat=minutes)
    return wav, float(sf.info(str(wav)).duration)


def run_in(tree: Path, wav: Path) -> dict[str, float]:
    """bench.media_stages.diarization of ``tree`` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(wav)], cwd=tree, env=env, capture_output=True, text=True, check=True
    )
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))  # type: ignore[no-any-return]


def measure(minutes: list[int], trees: dict[str, Path], rounds: int, folder: Path) -> list[Run]:
    runs = []
    for length in minutes:
        wav, audio = talk(folder, length)
        for round_ in range(rounds):
            for name, tree in trees.items() if round_ % 2 == 0 else reversed(trees.items()):
                result = run_in(tree, wav)
                run = Run(name, length, audio, result["seconds"], result["peak_rss_mb"], int(result["speakers"]))
                runs.append(run)
                print(
                    f"  {name} {length} min round {round_ + 1}: {run.factor:.1f}x realtime, "
                    f"{run.peak_rss_mb:.0f} MiB, {run.speakers} speakers",
                    file=sys.stderr,
                )
    return runs


def render(runs: list[Run]) -> str:
    lines = [
        "| code | talk | work s (best) | realtime factor (best) | each round | peak RSS MiB, each round | speakers |",
        "| --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for key in dict.fromkeys((run.tree, run.minutes) for run in runs):
        mine = [run for run in runs if (run.tree, run.minutes) == key]
        best = min(mine, key=lambda run: run.seconds)
        lines.append(
            f"| {key[0]} | {best.audio_seconds / 60:.1f} min | {best.seconds:.1f} | {best.factor:.1f} | "
            f"{', '.join(f'{run.factor:.1f}' for run in mine)} | "
            f"{', '.join(f'{run.peak_rss_mb:.0f}' for run in mine)} | "
            f"{', '.join(str(run.speakers) for run in mine)} |"
        )
    return "\n".join(lines) + "\n"


def section(runs: list[Run], rounds: int, trees: dict[str, Path]) -> str:
    load = os.getloadavg()
    return (
        f"{BEGIN}\n### Diarization alone: speed and memory\n\n`python -m bench.diarization_speed` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the local diarizer on the generated two-speaker talk, each run in "
        f"a fresh process that loads the models; {rounds} round(s), the trees ({', '.join(trees)}) alternating "
        f"within each round on the same talk. Load average at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        "(the machine's two cores are shared with other work, so compare rows of one run, not with other "
        "sections).\n\n"
        f"{render(runs)}{END}\n"
    )


def replace_section(path: Path, text: str) -> None:
    import re

    old = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.diarization_speed", description=__doc__)
    parser.add_argument("--minutes", type=int, nargs="+", default=[10, 60], help="lengths of the talk")
    parser.add_argument("--against", type=Path, default=None, help="another source tree to compare with")
    parser.add_argument("--against-name", default="before", help="its name in the table")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to put the table in")
    args = parser.parse_args(argv)
    trees = {"this tree": REPO}
    if args.against is not None:
        trees[args.against_name] = args.against.resolve()
    with tempfile.TemporaryDirectory(prefix="dhgq-diarization-speed-") as folder:
        runs = measure(args.minutes, trees, args.rounds, Path(folder))
    text = section(runs, args.rounds, trees)
    print(text)
    if args.out is not None:
        replace_section(args.out, text)
        print(f"wrote the table to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
