"""The Modal app's function bodies, run in this process through Modal's own ``.local()``.

``.local()`` (modal 1.6) builds the class instance from its ``modal.parameter`` values, runs the
``@modal.enter()`` methods once per instance and then the method itself, here, without
credentials: the same code a container runs, with the small CPU models instead of the GPU ones.
"""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import jiwer
import pytest
import soundfile as sf

from dhgq.errors import PermanentError, TransientError
from dhgq.media.serialize import diarization_from_dict, transcript_from_dict
from dhgq.media.types import SpeakerCount
from modal_gpu import app
from tests.support.speech import TWO_SPEAKER_SCRIPT, Reference, dialogue

pytestmark = pytest.mark.filterwarnings("ignore:.*executing locally.*")


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def talk(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return dialogue(TWO_SPEAKER_SCRIPT, tmp_path_factory.mktemp("talk") / "talk.wav")


@pytest.fixture(scope="module")
def transcriber() -> object:
    return app.Transcriber(engine="faster-whisper", model="tiny.en")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server standing in for signed Storage URLs; files go in the yielded folder."""
    root = tmp_path_factory.mktemp("served")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            if self.path.startswith("/busy"):
                self.send_error(503)
            else:
                super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    thread.join()


def test_fetch_audio_takes_bytes_or_urls_never_paths(server: tuple[str, Path]) -> None:
    url, root = server
    (root / "a.wav").write_bytes(b"RIFF....")
    assert app.fetch_audio(b"RIFF") == b"RIFF"
    assert app.fetch_audio(f"{url}/a.wav") == b"RIFF...."
    with pytest.raises(PermanentError, match="not a path"):
        app.fetch_audio("/srv/audio/a.wav")
    with pytest.raises(PermanentError, match="HTTP 404"):
        app.fetch_audio(f"{url}/missing.wav")
    with pytest.raises(TransientError, match="HTTP 503"):
        app.fetch_audio(f"{url}/busy")


@pytest.mark.slow
def test_transcriber_body_runs_through_local(transcriber: object, talk: Reference, server: tuple[str, Path]) -> None:
    output = transcriber.transcribe.local(talk.audio.read_bytes(), "tiny.en", None)  # type: ignore[attr-defined]
    assert output["device"] == "cpu" and output["seconds"] > 0
    transcript = transcript_from_dict(output["transcript"])
    assert transcript.engine == "faster-whisper" and transcript.model == "tiny.en"
    assert jiwer.wer(normalise(talk.words), normalise(transcript.text)) < 0.15

    url, root = server
    (root / "talk.wav").write_bytes(talk.audio.read_bytes())
    again = transcriber.transcribe.local(f"{url}/talk.wav", None, "en")  # type: ignore[attr-defined]
    assert again["transcript"]["text"] == output["transcript"]["text"]


@pytest.mark.slow
def test_transcribe_long_splits_fans_out_and_stitches(talk: Reference) -> None:
    output = app.transcribe_long.local(
        talk.audio.read_bytes(), "tiny.en", None, engine="faster-whisper", max_chunk=15.0
    )
    assert output["chunks"] >= 4
    transcript = transcript_from_dict(output["transcript"])
    words = [w for s in transcript.segments for w in s.words]
    assert all(b.start >= a.end for a, b in zip(words, words[1:], strict=False))
    total = sf.info(str(talk.audio)).duration
    assert words[0].start < 2.0 and words[-1].end > total - 3.0
    assert jiwer.wer(normalise(talk.words), normalise(transcript.text)) < 0.2


def test_transcribe_long_reports_failed_chunks(talk: Reference) -> None:
    def flaky(chunks: object, language: str | None) -> list[object]:
        return [TransientError("GPU went away")] + [PermanentError("bad")] * (len(chunks) - 1)  # type: ignore[arg-type]

    with pytest.raises(TransientError, match=r"of \d+ chunks failed \(chunk 0: GPU went away\)"):
        app.run_long_transcription(talk.audio.read_bytes(), flaky, max_chunk=15.0)
    with pytest.raises(PermanentError, match="chunks failed"):
        app.run_long_transcription(talk.audio.read_bytes(), lambda c, _: [PermanentError("x")] * len(c), 15.0)


def test_a_long_talk_s_language_is_told_once_and_every_chunk_decoded_in_it(talk: Reference) -> None:
    asked: list[int] = []
    decoded_in: list[str | None] = []
    text = {"text": "hola", "language": "xx", "segments": [], "model": "turbo", "engine": "openai-whisper"}

    def detect(snippets: list[bytes]) -> dict[str, object]:
        asked.append(len(snippets))
        return {"language": "es", "probability": 0.93}

    def run(chunks: object, language: str | None) -> list[object]:
        decoded_in.extend([language] * len(chunks))  # type: ignore[arg-type]
        return [{"transcript": text | {"duration_seconds": 15.0}, "device": "stand-in", "seconds": 1.0}] * len(chunks)  # type: ignore[arg-type]

    output = app.run_long_transcription(talk.audio.read_bytes(), run, max_chunk=15.0, detect=detect)
    assert asked == [3] and output["chunks"] >= 4  # once per talk, from its start, middle and end
    assert decoded_in == ["es"] * output["chunks"]
    assert output["language"] == "es" and output["language_probability"] == 0.93
    assert transcript_from_dict(output["transcript"]).language == "es"
    decoded_in.clear()
    app.run_long_transcription(talk.audio.read_bytes(), run, max_chunk=15.0, language="de", detect=detect)
    assert asked == [3] and set(decoded_in) == {"de"}  # a language asked for is never second-guessed


def test_the_transcriber_tells_the_language_through_local(talk: Reference) -> None:
    transcriber = app.Transcriber(engine="faster-whisper", model="tiny.en")
    told = transcriber.detect_language.local([talk.audio.read_bytes()])  # type: ignore[attr-defined]
    assert told == {"language": "en", "probability": 1.0}  # an English-only model knows one language


class SpawnedChunk:
    """A spawned chunk call as modal's FunctionCall behaves: ``get`` waits for the output; a cancelled
    coordinator sees ``InputCancellation`` (a BaseException) raised into it while it waits."""

    def __init__(self, index: int, cancelled_at: int) -> None:
        self.index, self.cancelled_at, self.cancels = index, cancelled_at, []

    def get(self, timeout: float | None = None) -> object:
        if self.index == self.cancelled_at:
            from modal.exception import InputCancellation

            raise InputCancellation("the coordinator's input was cancelled")
        return {"index": self.index}

    def cancel(self, terminate_containers: bool = False) -> None:
        self.cancels.append(terminate_containers)


def test_a_cancelled_coordinator_cancels_its_chunk_calls() -> None:
    from modal.exception import InputCancellation

    spawned: list[SpawnedChunk] = []

    class Method:
        def spawn(self, chunk: bytes, **kwargs: object) -> SpawnedChunk:
            spawned.append(SpawnedChunk(len(spawned), cancelled_at=1))
            return spawned[-1]

    run = app.fan_out(Method(), local=False, language="en")
    with pytest.raises(InputCancellation):
        run([b"a", b"b", b"c"])
    assert [call.cancels for call in spawned] == [[True], [True], [True]]


@pytest.mark.slow
def test_the_container_openai_whisper_engine_runs_here(tmp_path: Path, talk: Reference) -> None:
    """The engine a GPU container uses, on a checkpoint converted from the packaged tiny.en."""
    from dhgq.media.transcription.convert import openai_checkpoint

    checkpoint = openai_checkpoint("tiny.en", tmp_path)
    short = tmp_path / "short.wav"
    samples, rate = sf.read(str(talk.audio))
    end = talk.turns[1][1] + 0.2  # the first two utterances
    sf.write(str(short), samples[: int(end * rate)], rate, subtype="PCM_16")
    transcriber = app.Transcriber(engine="openai-whisper", model=str(checkpoint))
    output = transcriber.transcribe.local(short.read_bytes(), None, None)  # type: ignore[attr-defined]
    transcript = transcript_from_dict(output["transcript"])
    assert transcript.engine == "openai-whisper" and transcript.model == "tiny.en"
    assert transcript.language == "en" and transcript.duration_seconds == pytest.approx(end, abs=0.01)
    assert all(
        w.text == w.text.strip() and isinstance(w.probability, float) for s in transcript.segments for w in s.words
    )
    reference = normalise(" ".join(text for _, text in TWO_SPEAKER_SCRIPT[:2]))
    assert jiwer.wer(reference, normalise(transcript.text)) < 0.2


@pytest.mark.slow
def test_diarizer_body_runs_through_local(talk: Reference) -> None:
    diarizer = app.Diarizer(device="cpu")
    output = diarizer.diarize.local(talk.audio.read_bytes(), SpeakerCount(exact=2))  # type: ignore[attr-defined]
    diarization = diarization_from_dict(output["diarization"])
    assert len(diarization.speakers) == 2 and output["device"] == "cpu"
    assert diarization.turns and all(t.end > t.start for t in diarization.turns)
    speech = sum(end - start for start, end, _ in talk.turns)
    covered = sum(t.end - t.start for t in diarization.turns)
    assert covered == pytest.approx(speech, rel=0.25)


def test_a_failed_transcription_chunk_runs_once_more(talk: Reference) -> None:
    calls: list[int] = []
    text = {"text": "hello", "language": "en", "segments": [], "model": "turbo", "engine": "openai-whisper"}

    def flaky(chunks: object, language: str | None) -> list[object]:
        calls.append(len(chunks))  # type: ignore[arg-type]
        done = {"transcript": text | {"duration_seconds": 15.0}, "device": "stand-in", "seconds": 2.0}
        return [TransientError("lost") if len(calls) == 1 and i == 1 else done for i in range(len(chunks))]  # type: ignore[arg-type]

    output = app.run_long_transcription(talk.audio.read_bytes(), flaky, max_chunk=15.0)
    assert calls[1:] == [1] and output["chunks"] == calls[0] and output["gpu_seconds"] == 2.0 * calls[0]
    assert transcript_from_dict(output["transcript"]).model == "turbo"


def test_whisper_model_names_are_recorded_as_asked(tmp_path: Path) -> None:
    from modal_gpu.bodies import OpenAIWhisper

    engine = object.__new__(OpenAIWhisper)
    for name in ("tiny.en", "turbo", "large-v3"):
        engine.name = name
        assert engine.model_name == name
    checkpoint = tmp_path / "tiny.en.pt"
    checkpoint.write_bytes(b"")
    engine.name = str(checkpoint)
    assert engine.model_name == "tiny.en"


def test_the_app_has_no_secret_and_no_pyannote_unless_asked() -> None:
    assert not hasattr(app, "PyannoteDiarizer") and not hasattr(app, "huggingface")
    assert app.DEPLOY_ENV["DHGQ_MODAL_DIARIZATION_ENGINE"] == "local"


PYANNOTE_RUN = """
import sys
from modal_gpu import app
from dhgq.errors import PermanentError
assert app.PYANNOTE and app.DEPLOY_ENV["DHGQ_MODAL_DIARIZATION_ENGINE"] == "pyannote"
diarizer = app.PyannoteDiarizer()
try:
    diarizer.diarize.local(open(sys.argv[1], "rb").read())
except PermanentError as exc:
    print("PERMANENT", exc)
"""


@pytest.mark.parametrize("token", ["", "hf_refused"])
def test_pyannote_on_modal_fails_for_good_naming_both_gates(token: str, talk: Reference, tmp_path: Path) -> None:
    """The container starts (no crash loop); each call fails with a permanent error naming both gated
    models. A stand-in pyannote.audio loads its pipeline as None, as pyannote does when a gate is refused."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "pyannote" / "audio"
    fake.mkdir(parents=True)
    (fake.parent / "__init__.py").write_text("")
    loads_none = "    @classmethod\n    def from_pretrained(cls, name, use_auth_token=None):\n        return None\n"
    (fake / "__init__.py").write_text("class Pipeline:\n" + loads_none)
    root = Path(app.__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env |= {"DHGQ_MODAL_DIARIZATION_ENGINE": "pyannote", "PYTHONPATH": f"{root}{os.pathsep}{fake.parents[1]}"}
    if token:
        env["HF_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PYANNOTE_RUN, str(talk.audio)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PERMANENT" in done.stdout
    assert "pyannote/speaker-diarization-3.1" in done.stdout and "pyannote/segmentation-3.0" in done.stdout
    assert "modal secret create dhgq-huggingface HF_TOKEN=" in done.stdout
    assert ("no HF_TOKEN" in done.stdout) == (not token)
