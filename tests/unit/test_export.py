"""Every export format on a hand-made two-speaker transcript."""

from __future__ import annotations

import json
import re

import pysubs2
import pytest

from dhgq.errors import PermanentError
from dhgq.media.export import FORMATS, display_speaker, render
from dhgq.media.types import Diarization, Segment, SpeakerTurn, Summary, Transcript, Word

SEGMENTS = [
    Segment(0.0, 2.5, "Welcome to the talk.", 0.9, [Word(0.0, 0.6, "Welcome", 0.95, "SPEAKER_1")], "SPEAKER_1"),
    Segment(2.5, 4.0, "Today we look at queues.", 0.9, [], "SPEAKER_1"),
    Segment(4.2, 7.75, "Thanks, how do jobs survive a crash?", 0.8, [], "SPEAKER_2"),
    Segment(8.0, 3725.5, "They live in the database.", 0.85, [], "SPEAKER_1"),
]


def make_transcript(speakers: bool = True) -> Transcript:
    segments = [
        Segment(s.start, s.end, s.text, s.confidence, list(s.words), s.speaker if speakers else None) for s in SEGMENTS
    ]
    return Transcript(
        text=" ".join(s.text for s in segments),
        language="en",
        segments=segments,
        model="tiny.en",
        engine="faster-whisper",
        duration_seconds=3725.5,
    )


DIARIZATION = Diarization(
    turns=[
        SpeakerTurn(0.0, 4.1, "SPEAKER_1"),
        SpeakerTurn(4.1, 7.9, "SPEAKER_2"),
        SpeakerTurn(7.9, 3725.5, "SPEAKER_1"),
    ],
    speakers=["SPEAKER_1", "SPEAKER_2"],
)

SUMMARY = Summary(
    summary="A short talk about durable job queues.",
    key_points=["Jobs live in the database"],
    topics=["queues"],
    document_type="presentation",
    method="extractive",
    details={"method": "extractive"},
)


def test_speaker_labels_are_shown_readably() -> None:
    assert display_speaker("SPEAKER_1") == "Speaker 1"
    assert display_speaker("SPEAKER_01") == "Speaker 1"
    assert display_speaker("Alice") == "Alice"
    assert display_speaker(None) is None


def test_txt_merges_consecutive_segments_of_one_speaker() -> None:
    text = render(make_transcript(), DIARIZATION, "txt")

    assert text.splitlines() == [
        "Speaker 1: Welcome to the talk. Today we look at queues.",
        "Speaker 2: Thanks, how do jobs survive a crash?",
        "Speaker 1: They live in the database.",
    ]


def test_speakers_come_from_the_diarization_when_segments_have_none() -> None:
    assert render(make_transcript(speakers=False), DIARIZATION, "txt") == render(make_transcript(), None, "txt")
    assert render(make_transcript(speakers=False), None, "txt").splitlines()[0] == "Welcome to the talk."


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse_back_with_pysubs2(fmt: str) -> None:
    rendered = render(make_transcript(), DIARIZATION, fmt)

    subtitles = pysubs2.SSAFile.from_string(rendered, format_=fmt)
    assert [(e.start, e.end) for e in subtitles] == [(0, 2500), (2500, 4000), (4200, 7750), (8000, 3725500)]
    assert [e.plaintext for e in subtitles] == [
        "Speaker 1: Welcome to the talk.",
        "Speaker 1: Today we look at queues.",
        "Speaker 2: Thanks, how do jobs survive a\ncrash?",  # two lines of at most 42 characters
        "Speaker 1: They live in the database.",
    ]
    if fmt == "vtt":
        assert rendered.startswith("WEBVTT")
        assert "01:02:05.500" in rendered
    else:
        assert "00:00:04,200 --> 00:00:07,750" in rendered


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_long_segments_become_cues_of_two_lines_of_42_characters(fmt: str) -> None:
    text = (
        "Procrastinate keeps its jobs in the same PostgreSQL database as the results, so a stage's outputs, "
        "its stage row and the next stage's job commit in one transaction, and nothing is lost in between."
    )
    words = [Word(1.0 + i * 0.4, 1.3 + i * 0.4, w, 0.9) for i, w in enumerate(text.split())]
    long = Segment(1.0, words[-1].end, text, 0.9, words, "SPEAKER_1")
    rendered = render(Transcript(text, "en", [long], "tiny.en", "faster-whisper"), None, fmt)

    cues = pysubs2.SSAFile.from_string(rendered, format_=fmt)
    lines = [line for cue in cues for line in cue.plaintext.split("\n")]
    assert len(cues) > 1 and all(len(cue.plaintext.split("\n")) <= 2 for cue in cues)
    assert max(len(line) for line in lines) <= 42
    assert " ".join(lines) == "Speaker 1: " + text  # every word, in order
    times = [(cue.start, cue.end) for cue in cues]
    assert times[0][0] == 1000 and times[-1][1] == round(long.end * 1000)
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(times, times[1:], strict=False))
    assert all(start < end for start, end in times)
    assert {cue.end for cue in cues[:-1]} <= {round(w.end * 1000) for w in words}  # cut where a word ends


def test_json_has_the_full_structure_and_summary() -> None:
    document = json.loads(render(make_transcript(), DIARIZATION, "json", title="Queues", summary=SUMMARY))

    assert document["title"] == "Queues"
    assert document["language"] == "en"
    assert [s["id"] for s in document["speakers"]] == ["SPEAKER_1", "SPEAKER_2"]
    assert document["speakers"][1]["label"] == "Speaker 2"
    assert len(document["segments"]) == 4
    assert document["segments"][0]["words"][0] == {
        "start": 0.0,
        "end": 0.6,
        "text": "Welcome",
        "probability": 0.95,
        "speaker": "SPEAKER_1",
    }
    assert document["segments"][2]["speaker_label"] == "Speaker 2"
    assert len(document["turns"]) == 3
    assert document["summary"]["summary"] == SUMMARY.summary
    assert json.loads(render(make_transcript(), None, "json"))["summary"] is None


def test_markdown_has_title_speakers_summary_and_timestamped_turns() -> None:
    md = render(make_transcript(), DIARIZATION, "md", title="Queues", summary=SUMMARY)

    assert md.startswith("# Queues\n")
    assert "**Speakers:** Speaker 1, Speaker 2" in md
    assert "## Summary" in md and "- Jobs live in the database" in md
    assert "**[00:00:00] Speaker 1:** Welcome to the talk. Today we look at queues." in md
    assert "**[00:00:04] Speaker 2:** Thanks, how do jobs survive a crash?" in md
    assert "**[00:00:08] Speaker 1:** They live in the database." in md
    assert "## Summary" not in render(make_transcript(), DIARIZATION, "md")


RTTM_LINE = re.compile(r"SPEAKER (\S+) 1 (\d+\.\d{3}) (\d+\.\d{3}) <NA> <NA> (\S+) <NA> <NA>")


def test_rttm_lines_are_well_formed() -> None:
    rttm = render(make_transcript(), DIARIZATION, "rttm", title="weekly talk")

    lines = rttm.splitlines()
    assert len(lines) == 3
    parsed = [RTTM_LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], float(m[2]), float(m[3]), m[4]) for m in parsed if m] == [
        ("weekly_talk", 0.0, 4.1, "SPEAKER_1"),
        ("weekly_talk", 4.1, pytest.approx(3.8), "SPEAKER_2"),
        ("weekly_talk", 7.9, pytest.approx(3717.6), "SPEAKER_1"),
    ]
    # Without a diarization, the merged segment turns are written instead.
    fallback = render(make_transcript(), None, "rttm").splitlines()
    assert len(fallback) == 3 and all(RTTM_LINE.fullmatch(line) for line in fallback)
    assert fallback[0].split()[1] == "recording"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_an_empty_transcript(fmt: str) -> None:
    empty = Transcript(text="", language=None, segments=[], model="tiny.en", engine="faster-whisper")
    assert isinstance(render(empty, None, fmt), str)


def test_unknown_format_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="Unknown export format 'docx'"):
        render(make_transcript(), None, "docx")
