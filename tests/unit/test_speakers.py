"""Speaker assignment to transcript words: pure functions on hand-made dataclasses."""

from __future__ import annotations

from dhgq.media.speakers import assign_speakers, relabel_speakers, speaker_at, speaker_names
from dhgq.media.types import Diarization, Segment, SpeakerTurn, Transcript, Word


def transcript(*segments: Segment) -> Transcript:
    return Transcript(
        text=" ".join(s.text for s in segments), language="en", segments=list(segments), model="tiny.en", engine="test"
    )


def words(*spec: tuple[float, float, str]) -> list[Word]:
    return [Word(start, end, text) for start, end, text in spec]


def diarization(*turns: tuple[float, float, str], embeddings: dict | None = None) -> Diarization:
    return Diarization(
        turns=[SpeakerTurn(*t) for t in turns],
        speakers=sorted({t[2] for t in turns}),
        embeddings=embeddings or {},
        engine="test",
    )


def test_each_word_takes_the_speaker_it_overlaps_most() -> None:
    turns = [SpeakerTurn(0.0, 1.0, "A"), SpeakerTurn(0.9, 3.0, "B")]
    assert speaker_at(0.2, 0.8, turns) == "A"
    assert speaker_at(0.8, 1.5, turns) == "B"  # 0.1 s with A, 0.5 s with B
    assert speaker_at(2.0, 2.0, turns) == "B"  # a zero-length word inside a turn


def test_a_word_between_turns_takes_the_nearest_turn() -> None:
    turns = [SpeakerTurn(0.0, 1.0, "A"), SpeakerTurn(3.0, 4.0, "B")]
    assert speaker_at(1.2, 1.4, turns) == "A"
    assert speaker_at(2.5, 2.8, turns) == "B"
    assert speaker_at(9.0, 9.5, turns) == "B"
    assert speaker_at(0.5, 0.6, []) is None


def test_segments_are_split_where_the_speaker_changes() -> None:
    segment = Segment(
        0.0,
        4.0,
        " Hello there. Hi, how are you?",
        confidence=-0.2,
        words=words(
            (0.0, 0.5, " Hello"),
            (0.5, 1.0, " there."),
            (2.0, 2.4, " Hi,"),
            (2.4, 2.8, " how"),
            (2.8, 3.2, " are"),
            (3.2, 4.0, " you?"),
        ),
    )
    labelled = assign_speakers(transcript(segment), diarization((0.0, 1.2, "spk_b"), (1.8, 4.0, "spk_a")))

    assert [(s.start, s.end, s.text, s.speaker) for s in labelled.segments] == [
        (0.0, 1.0, "Hello there.", "SPEAKER_1"),
        (2.0, 4.0, "Hi, how are you?", "SPEAKER_2"),
    ]
    assert all(w.speaker == s.speaker for s in labelled.segments for w in s.words)
    assert labelled.segments[1].confidence == -0.2
    assert labelled.text == " Hello there. Hi, how are you?"  # the full text is untouched


def test_words_without_leading_spaces_are_joined_with_one() -> None:
    segment = Segment(0.0, 2.0, "a b c", words=words((0.0, 0.5, "a"), (0.5, 1.0, "b"), (1.5, 2.0, "c")))
    labelled = assign_speakers(transcript(segment), diarization((0.0, 1.1, "x"), (1.1, 2.0, "y")))
    assert [s.text for s in labelled.segments] == ["a b", "c"]


def test_a_segment_without_words_takes_the_speaker_it_overlaps_most() -> None:
    labelled = assign_speakers(
        transcript(Segment(0.0, 3.0, "no word timings"), Segment(5.0, 6.0, "after the last turn")),
        diarization((0.0, 1.0, "A"), (1.0, 3.0, "B")),
    )
    assert [s.speaker for s in labelled.segments] == ["SPEAKER_2", "SPEAKER_2"]
    assert len(labelled.segments) == 2


def test_names_follow_first_appearance_and_agree_with_the_renamed_diarization() -> None:
    raw = diarization(
        (5.0, 6.0, "SPEAKER_00"),
        (0.0, 2.0, "SPEAKER_01"),
        (2.0, 4.0, "SPEAKER_00"),
        embeddings={"SPEAKER_00": [0.0, 1.0], "SPEAKER_01": [1.0, 0.0]},
    )
    raw.speakers.append("SPEAKER_02")  # a speaker the pipeline found but kept no turn for

    assert speaker_names(raw) == {"SPEAKER_01": "SPEAKER_1", "SPEAKER_00": "SPEAKER_2", "SPEAKER_02": "SPEAKER_3"}
    renamed = relabel_speakers(raw)
    assert [(t.start, t.speaker) for t in renamed.turns] == [(0.0, "SPEAKER_1"), (2.0, "SPEAKER_2"), (5.0, "SPEAKER_2")]
    assert renamed.speakers == ["SPEAKER_1", "SPEAKER_2", "SPEAKER_3"]
    assert renamed.embeddings == {"SPEAKER_1": [1.0, 0.0], "SPEAKER_2": [0.0, 1.0]}

    segment = Segment(0.0, 6.0, "one two three", words=words((0.5, 1.0, "one"), (2.5, 3.0, "two"), (5.2, 5.6, "three")))
    labelled = assign_speakers(transcript(segment), raw)
    assert [s.speaker for s in labelled.segments] == ["SPEAKER_1", "SPEAKER_2"]
    assert {s.speaker for s in labelled.segments} <= set(renamed.speakers)
    assert assign_speakers(transcript(segment), renamed) == labelled  # renaming twice changes nothing


def test_no_turns_leave_the_transcript_alone() -> None:
    original = transcript(Segment(0.0, 1.0, "hello", words=words((0.0, 1.0, "hello"))))
    assert assign_speakers(original, diarization()) == original


def test_overlapped_speech_goes_to_the_speaker_with_more_of_the_word() -> None:
    segment = Segment(0.0, 2.0, "yes no", words=words((0.0, 1.0, "yes"), (1.0, 2.0, "no")))
    labelled = assign_speakers(transcript(segment), diarization((0.0, 2.0, "A"), (0.4, 1.0, "B")))
    assert [s.speaker for s in labelled.segments] == ["SPEAKER_1"]
