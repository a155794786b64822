"""Where the GPU stages run: in the worker (``local``) or on Modal (``modal_gpu/app.py``).

``transcribe``, ``diarize`` and ``warm`` are what the tasks hand to their stage's model host (a
child process, see ``dhgq.runner``); each picks this process's backend once (``backend_for``), so
models load once per worker process, never per job.

``select_backend`` turns ``settings.gpu_backend`` into a backend and a sentence saying why.
Both backends return the result together with run metadata (backend, gpu, model,
duration_s, ...) for the stage row. Modal's failures are sorted into dhgq's error classes here:
missing credentials or deployment are ``ConfigurationError``; timeouts, connection trouble
and an unavailable service are ``TransientError``, retried by the queue (Modal retries nothing).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dhgq.errors import ConfigurationError, DhgqError, PermanentError, StageTimeout, TransientError, classify
from dhgq.media.serialize import diarization_from_dict, transcript_from_dict
from dhgq.media.transcription.models import ModelChoice, choose_model
from dhgq.media.types import ANY_SPEAKERS, Diarization, Progress, SpeakerCount, Transcript
from dhgq.settings import Settings

if TYPE_CHECKING:
    from dhgq.media.diarization.engines import DiarizationEngine
    from dhgq.media.transcription.engines import Prompt, TranscriptionEngine

RunInfo = dict[str, Any]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioInput:
    """The audio a model stage hands its engine: a file on this machine (fetched from the artifact
    store into its cache, or the work dir's own), or signed URLs that a remote GPU function fetches
    (the parts of the compact copy, in order), whichever machine made it."""

    source_id: str
    seconds: float | None
    path: str | None = None
    urls: tuple[str, ...] = ()

    def local_path(self) -> Path:
        if self.path is None:
            raise ConfigurationError("the local engines need the audio on this machine, and were handed URLs only")
        return Path(self.path)

    def length(self) -> float:
        """Its length in seconds: as extraction probed it, else read from the file."""
        if self.seconds is not None:
            return self.seconds
        import soundfile as sf

        return float(sf.info(str(self.local_path())).duration)


CREDENTIALS_FIX = "run `modal token new` or set MODAL_TOKEN_ID/MODAL_TOKEN_SECRET, then `dhgq modal deploy`"
DEPLOY_FIX = "run `dhgq modal deploy`"
# Model names openai-whisper can fetch (the Modal app's engine); local paths do not travel.
MODAL_WHISPER_MODELS = frozenset(
    {
        "tiny.en",
        "tiny",
        "base.en",
        "base",
        "small.en",
        "small",
        "medium.en",
        "medium",
        "large-v1",
        "large-v2",
        "large-v3",
        "large",
        "large-v3-turbo",
        "turbo",
    }
)
LONG_AUDIO_SECONDS = 600.0
MODAL_DIARIZERS = {"local": "Diarizer", "pyannote": "PyannoteDiarizer"}  # the app's class per engine


class GpuBackend(Protocol):
    """Runs the two GPU stages on a WAV and says how it went."""

    name: str
    default_model: str  # the Whisper model of a request that names none (locally maybe "auto")

    def model_for(self, requested: str | None, language: str | None) -> ModelChoice: ...

    def transcribe(
        self,
        audio: AudioInput,
        *,
        model: str,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> tuple[Transcript, RunInfo]: ...

    def diarize(
        self, audio: AudioInput, *, speakers: SpeakerCount = ANY_SPEAKERS, progress: Progress | None = None
    ) -> tuple[Diarization, RunInfo]: ...


def run_info(
    backend: str, gpu: str | None, model: str, started: float, cpu_started: float | None = None, **extra: Any
) -> RunInfo:
    """The metadata stored with a stage's result. ``cpu_started`` (``time.process_time()`` when the
    work began, in the process that did it) adds the CPU seconds of all its threads, which
    ``dhgq.costs`` reports next to the wall seconds."""
    info = {
        "backend": backend,
        "gpu": gpu,
        "model": model,
        "duration_s": round(time.perf_counter() - started, 3),
        **extra,
    }
    if cpu_started is not None:
        info["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
    return info


class LocalBackend:
    """The engines of ``dhgq.media``, in this process (models cached per process)."""

    name = "local"
    # Threads per model (None: the libraries' defaults, all cores). A worker's model hosts set it:
    # they run transcription and diarization side by side, and left alone CTranslate2 and torch
    # each start a thread per core and fight over the cores (on 2 cores the pair took 45 s on a
    # 10-minute talk, against 30 s with one thread each).
    cpu_threads: int | None = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_model = settings.whisper_model

    def model_for(self, requested: str | None, language: str | None) -> ModelChoice:
        """The request's model, else DHGQ_WHISPER_MODEL; ``auto`` by the language (see models.choose_model)."""
        s = self.settings
        return choose_model(
            requested,
            s.whisper_model,
            language,
            english=s.whisper_english_model,
            multilingual=s.whisper_multilingual_model,
        )

    def transcription_engine(self, model: str) -> TranscriptionEngine:
        from dhgq.media.transcription.engines import load_engine

        s = self.settings
        if s.whisper_engine == "openai-whisper":
            self._limit_torch_threads()
        return load_engine(s.whisper_engine, model, s.whisper_compute_type, s.models_dir, self.cpu_threads or 0)

    def diarization_engine(self) -> DiarizationEngine:
        from dhgq.media.diarization.engines import load_diarizer

        self._limit_torch_threads()
        return load_diarizer(self.settings.diarization_engine)

    def _limit_torch_threads(self) -> None:
        if self.cpu_threads:
            import torch

            torch.set_num_threads(self.cpu_threads)

    def transcribe(
        self,
        audio: AudioInput,
        *,
        model: str,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> tuple[Transcript, RunInfo]:
        started, cpu_started = time.perf_counter(), time.process_time()
        engine = self.transcription_engine(model)
        transcript = engine.transcribe(audio.local_path(), language=language, progress=progress, prompt=prompt)
        return transcript, run_info(self.name, None, model, started, cpu_started, engine=transcript.engine)

    def diarize(
        self, audio: AudioInput, *, speakers: SpeakerCount = ANY_SPEAKERS, progress: Progress | None = None
    ) -> tuple[Diarization, RunInfo]:
        started, cpu_started = time.perf_counter(), time.process_time()
        diarizer = self.diarization_engine()
        diarization = diarizer.diarize(audio.local_path(), speakers=speakers, progress=progress)
        return diarization, run_info(
            self.name, None, diarization.engine, started, cpu_started, engine=diarization.engine
        )


class ModalBackend:
    """The deployed Modal app: sends the audio (bytes or a signed URL), gets dataclass dicts back.

    Each call is spawned and awaited in slices of ``POLL_SECONDS``, so that it can be cancelled:
    when the stage's time limit passes here, or when the model host running this is killed (a
    timeout or a cancel seen by the parent, which then calls ``cancel_modal_call`` with the id
    reported through ``dhgq.runner.report_remote_work``).
    """

    name = "modal"
    POLL_SECONDS = 5.0

    def __init__(self, settings: Settings, *, long_audio_seconds: float = LONG_AUDIO_SECONDS) -> None:
        self.settings = settings
        self.default_model = settings.modal_whisper_model
        self.long_audio_seconds = long_audio_seconds

    def model_for(self, requested: str | None, language: str | None) -> ModelChoice:
        """The request's model, else DHGQ_MODAL_WHISPER_MODEL (multilingual by default: turbo)."""
        return ModelChoice(requested or self.default_model, "asked for" if requested else "DHGQ_MODAL_WHISPER_MODEL")

    def transcribe(
        self,
        audio: AudioInput,
        *,
        model: str,
        language: str | None = None,
        progress: Progress | None = None,
        prompt: Prompt | None = None,
    ) -> tuple[Transcript, RunInfo]:
        import modal

        if model not in MODAL_WHISPER_MODELS:
            raise ConfigurationError(
                f"Whisper model {model!r} is not one the Modal app can load: use one of "
                f"{', '.join(sorted(MODAL_WHISPER_MODELS))} (DHGQ_MODAL_WHISPER_MODEL)"
            )
        started = time.perf_counter()
        payload, seconds = modal_payload(audio)
        app_name = self.settings.modal_app_name
        long = seconds > self.long_audio_seconds
        hints = {"prompt": prompt.as_text()} if prompt is not None else {}  # openai-whisper: no hotwords

        def spawn() -> Any:
            if long:
                return modal.Function.from_name(app_name, "transcribe_long").spawn(payload, model, language, **hints)
            transcriber = modal.Cls.from_name(app_name, "Transcriber")(model=model)
            return transcriber.transcribe.spawn(payload, model, language, **hints)

        function = "transcribe_long" if long else "Transcriber.transcribe"
        output = self._await_remote("transcription", audio, seconds, function, spawn, model=model, language=language)
        transcript = transcript_from_dict(output["transcript"])
        if output.get("language_probability") is not None and transcript.language_probability is None:
            transcript = replace(transcript, language_probability=float(output["language_probability"]))
        return transcript, self._run_info(model, transcript.engine, started, output)

    def diarize(
        self, audio: AudioInput, *, speakers: SpeakerCount = ANY_SPEAKERS, progress: Progress | None = None
    ) -> tuple[Diarization, RunInfo]:
        import modal

        started = time.perf_counter()
        payload, seconds = modal_payload(audio)
        app_name, engine = self.settings.modal_app_name, self.settings.modal_diarization_engine
        long = engine == "local" and seconds > self.long_audio_seconds

        def spawn() -> Any:
            if long:
                return modal.Function.from_name(app_name, "diarize_long").spawn(payload, speakers)
            diarizer = modal.Cls.from_name(app_name, MODAL_DIARIZERS[engine])()
            return diarizer.diarize.spawn(payload, speakers)

        function = "diarize_long" if long else f"{MODAL_DIARIZERS[engine]}.diarize"
        output = self._await_remote("diarization", audio, seconds, function, spawn, model=engine, speakers=speakers)
        diarization = diarization_from_dict(output["diarization"])
        return diarization, self._run_info(diarization.engine, diarization.engine, started, output)

    def _await_remote(
        self, stage: str, audio: AudioInput, seconds: float, function: str, spawn: Callable[[], Any], **request: Any
    ) -> dict[str, Any]:
        """Spawn a Modal call and wait for its output within the stage's time limit, with its ledger
        row (started before, GPU seconds and cost after) and Modal's errors as dhgq's."""
        from dhgq.ledger import gpu_call

        deadline = time.monotonic() + self.settings.stage_timeout(seconds)
        if audio.source_id:
            cancel_open_calls(self.settings, audio.source_id, stage)  # an earlier attempt's, left running
        record = gpu_call(
            self.settings, stage=stage, source_id=audio.source_id, function=function, audio_s=seconds, **request
        )
        with record as call, modal_errors(self.settings.modal_app_name, stage):
            spawned = spawn()
            call.spawned(spawned.object_id)
            terminate = not function.endswith("_long")
            output: dict[str, Any] = wait_for(spawned, deadline, stage, self.POLL_SECONDS, terminate=terminate)
            call.gpu_seconds = self._gpu_seconds(output)
        return output

    def _run_info(self, model: str, engine: str, started: float, output: dict[str, Any]) -> RunInfo:
        return run_info(
            self.name,
            self.settings.modal_gpu,
            model,
            started,
            engine=engine,
            device=output.get("device"),
            remote_s=round(output.get("seconds", 0.0), 3),
            chunks=output.get("chunks", 1),
        )

    def _gpu_seconds(self, output: dict[str, Any]) -> float | None:
        """GPU seconds of a call, as the remote measured them. ``transcribe_long`` runs on a CPU and
        fans its chunks out over up to modal_max_containers GPUs: without their own sum
        (``gpu_seconds``), its wall seconds times the GPUs it may have used bound them from above."""
        if output.get("gpu_seconds") is not None:
            return round(float(output["gpu_seconds"]), 3)
        if output.get("seconds") is None:
            return None
        gpus = min(int(output.get("chunks") or 1), self.settings.modal_max_containers)
        return round(float(output["seconds"]) * gpus, 3)


RECONNECT_LIMIT = 8  # consecutive polls that lost touch with Modal (about two minutes of backoff) before giving up


def wait_for(call: Any, deadline: float, stage: str, poll: float = 5.0, *, terminate: bool = True) -> Any:
    """The output of a spawned Modal call (a ``FunctionCall``), awaited in slices of ``poll`` seconds.

    While the call runs, ``FunctionCall.get(timeout=)`` raises Python's own ``TimeoutError`` (modal 1.x,
    ``_Invocation.poll_function``); that, and Modal's ``TimeoutError`` class, mean "not yet". A poll that
    loses touch with Modal (a connection error) waits on the same call again with backoff, never spawns
    another. Anything else ends the wait, and the call is cancelled on the way out (a no-op when it has
    finished): past ``deadline`` (``time.monotonic()``), on the remote's own failure, on an interrupt.
    ``terminate``: stop its containers too (the GPU classes); a coordinator is cancelled gently instead,
    so that it cancels the chunk calls it spawned."""
    from dhgq.runner import report_remote_work

    report_remote_work(cancel_modal_call if terminate else cancel_modal_coordinator, call.object_id)
    try:
        return _poll(call, deadline, stage, poll)
    except BaseException:
        cancel_call(call, terminate=terminate)
        raise
    finally:
        report_remote_work(None)


def _poll(call: Any, deadline: float, stage: str, poll: float) -> Any:
    from grpclib.exceptions import StreamTerminatedError
    from modal import exception as mx

    reconnectable = (mx.ConnectionError, mx.ServiceError, mx.InternalError, StreamTerminatedError, ConnectionError)
    lost = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise StageTimeout(f"the Modal {stage} call ran past the stage's time limit and was cancelled")
        try:
            return call.get(timeout=min(poll, left))
        except (mx.OutputExpiredError, mx.FunctionTimeoutError):
            raise
        except (TimeoutError, mx.TimeoutError):  # still running
            lost = 0
        except reconnectable as exc:
            lost += 1
            if lost > RECONNECT_LIMIT:
                raise TransientError(f"lost touch with the Modal {stage} call {call.object_id}: {exc!r}") from exc
            logger.warning("lost touch with the Modal %s call %s (%r): waiting on it again", stage, call.object_id, exc)
            time.sleep(max(0.0, min(2.0**lost / 2, 30.0, deadline - time.monotonic())))


def cancel_call(call: Any, *, terminate: bool = True) -> None:
    """Cancel a spawned Modal call, best effort: a failure to cancel is logged, not raised."""
    try:
        call.cancel(terminate_containers=terminate)
    except Exception as exc:  # noqa: BLE001 - the stage ends either way
        logger.warning("could not cancel the Modal call %s: %s", getattr(call, "object_id", "?"), exc)


def cancel_modal_call(call_id: str) -> None:
    """Cancel the Modal call ``call_id`` and stop its containers (run by a model host's parent after it
    killed the child that waited on it, or for a call a stopped worker left running)."""
    import modal

    cancel_call(modal.FunctionCall.from_id(call_id), terminate=True)
    logger.info("cancelled the Modal call %s", call_id)


def cancel_modal_coordinator(call_id: str) -> None:
    """Cancel a long-audio coordinator's call so that it cancels its chunk calls itself (its containers stay)."""
    import modal

    cancel_call(modal.FunctionCall.from_id(call_id), terminate=False)
    logger.info("cancelled the Modal coordinator call %s", call_id)


def cancel_open_calls(settings: Settings, source_id: str | None, stage: str | None = None) -> int:
    """Cancel the Modal calls the ledger shows still open for this source (and stage): what a worker
    killed outright, or a cancelled request, left running; without a source, every open call whose stage
    no worker runs any more (the workers' recovery round). Best effort; how many were cancelled."""
    from dhgq.ledger import close_open_remote_calls

    def cancel(call_id: str, function: str) -> None:
        (cancel_modal_coordinator if function.endswith("_long") else cancel_modal_call)(call_id)

    return close_open_remote_calls(settings, source_id, stage, cancel)


def modal_payload(audio: AudioInput) -> tuple[bytes | str | list[str], float]:
    """What a Modal function fetches, and the audio's length in seconds.

    With a shared artifact store, the signed URLs of the compact copy (Opus at 24 kb/s: about 11 MB an
    hour, where the 16 kHz WAV is about 115 MB), made when the stage started and valid for its whole
    time limit, so a call that waits in Modal's queue still finds its audio; one URL, or the URLs of its
    parts in order. With the local store (one machine), the file's bytes.
    """
    if audio.urls:
        urls = list(audio.urls)
        return (urls[0] if len(urls) == 1 else urls), audio.length()
    path = audio.local_path()
    if not path.is_file():
        raise PermanentError(f"{path}: audio file not found", file=str(path))
    return path.read_bytes(), audio.length()


@contextmanager
def modal_errors(app_name: str, stage: str) -> Iterator[None]:
    """Modal's exceptions as dhgq's: configuration, transient or permanent."""
    from modal import exception as mx

    try:
        yield
    except DhgqError:
        raise
    except mx.NotFoundError as exc:
        raise ConfigurationError(
            f"the Modal app {app_name!r} is not deployed ({exc}): {DEPLOY_FIX}", stage=stage
        ) from exc
    except (mx.AuthError, mx.PermissionDeniedError) as exc:
        message = f"Modal refused the credentials ({exc}): {CREDENTIALS_FIX}"
        raise ConfigurationError(message, stage=stage) from exc
    except (
        mx.TimeoutError,
        mx.ConnectionError,
        mx.InternalFailure,
        mx.InternalError,
        mx.ServiceError,
        mx.ResourceExhaustedError,
        mx.ClientClosed,
        TimeoutError,
        ConnectionError,
    ) as exc:
        raise TransientError(f"Modal {stage} failed, will retry: {exc!r}", stage=stage) from exc
    except (mx.InvalidError, mx.RequestSizeError, mx.SerializationError) as exc:
        raise PermanentError(f"Modal rejected the {stage} request: {exc}", stage=stage) from exc
    except Exception as exc:  # the remote body's own exception, re-raised here by Modal
        error = PermanentError if classify(exc) == "permanent" else TransientError
        raise error(f"Modal {stage} failed: {exc!r}", stage=stage) from exc


def modal_credentials() -> str | None:
    """Where Modal's token comes from (environment or config file), or None: modal's own lookup."""
    from modal import config

    if not (config.config.get("token_id") and config.config.get("token_secret")):
        return None
    if config.config.get("token_id") == config.config.get("token_id", use_env=False):
        return f"the Modal config file {config.user_config_path}"
    return "MODAL_TOKEN_ID/MODAL_TOKEN_SECRET"


def select_backend(settings: Settings) -> tuple[GpuBackend, str]:
    """The backend ``settings.gpu_backend`` asks for, and why it was chosen."""
    if settings.gpu_backend == "local":
        return LocalBackend(settings), "gpu_backend=local: the models run in the worker"
    where = modal_credentials()
    target = f"Modal app {settings.modal_app_name!r} on {settings.modal_gpu}"
    if settings.gpu_backend == "modal":
        if where is None:
            raise ConfigurationError(f"gpu_backend=modal but Modal has no credentials: {CREDENTIALS_FIX}")
        return ModalBackend(settings), f"gpu_backend=modal: {target} (credentials from {where})"
    if where is None:
        return LocalBackend(settings), (
            "gpu_backend=auto: chose local, because no Modal credentials are configured "
            f"(to use Modal: {CREDENTIALS_FIX})"
        )
    return ModalBackend(settings), f"gpu_backend=auto: chose Modal, {target} (credentials from {where})"


# --- what a stage's model host runs (dhgq.runner calls them as function(settings, **kwargs)) ----------


@lru_cache(maxsize=2)
def backend_for(settings: Settings) -> GpuBackend:
    """This process's backend, built once; local models share the cores with the worker's other hosts.

    The process's temporary files (the diarizer's spilled features of a long talk, say) go under
    ``DHGQ_TEMP_DIR`` (a disk the operator chose), not wherever the system keeps them."""
    settings.scratch_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(settings.scratch_dir)
    backend, _reason = select_backend(settings)
    if isinstance(backend, LocalBackend):
        backend.cpu_threads = settings.threads_per_model_job()
    return backend


def transcribe(
    settings: Settings,
    audio: AudioInput,
    model: str | None = None,
    language: str | None = None,
    prompt: Prompt | None = None,
) -> tuple[Transcript, RunInfo]:
    """Whisper on the audio; a request's model, language and hints win over the settings. The run says
    which model and why, and whether the language was detected (with its probability) or given."""
    from dhgq.runner import report_progress

    backend = backend_for(settings)
    language = language or settings.whisper_language
    choice = backend.model_for(model, language)
    transcript, info = backend.transcribe(
        audio, model=choice.model, language=language, progress=report_progress, prompt=prompt
    )
    info["model_choice"] = choice.reason
    info["language_detected"] = language is None
    info["language_probability"] = transcript.language_probability
    if prompt is not None:
        info["prompt"] = {"initial_prompt": prompt.text, "vocabulary": list(prompt.vocabulary)}
    return transcript, info


def diarize(
    settings: Settings, audio: AudioInput, speakers: SpeakerCount = ANY_SPEAKERS
) -> tuple[Diarization, RunInfo]:
    """Who spoke when; a request's speaker count steers the clustering."""
    from dhgq.runner import report_progress

    return backend_for(settings).diarize(audio, speakers=speakers, progress=report_progress)


def warm(settings: Settings, stage: str) -> str:
    """Load the stage's models now (and compile what numba compiles), so no job pays for it."""
    backend = backend_for(settings)
    if isinstance(backend, LocalBackend):
        if stage == "transcription":
            backend.transcription_engine(backend.model_for(None, settings.whisper_language).model)
        elif stage == "diarization":
            backend.diarization_engine()
    return stage
