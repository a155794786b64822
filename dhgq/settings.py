"""One typed Settings object for the whole of dhgq.

Every knob is a ``DHGQ_*`` environment variable (or a line in ``.env``); nothing else in the
package reads ``os.environ``. Secrets are ``SecretStr`` so that printing the settings, logging
them or showing them in the monitor never reveals a key or a database password.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from dhgq.media.summarization.prices import PRICES_PER_MTOK

Stage = Literal["extraction", "transcription", "diarization", "summarization"]
STAGES: tuple[Stage, ...] = ("extraction", "transcription", "diarization", "summarization")
SEED_MODEL_CONCURRENCY = 2  # the seeds' MAX_CONCURRENT_TRANSCRIPTIONS and _DIARIZATIONS

# Public list prices. Claude's: dhgq/media/summarization/prices.py. Modal: USD per GPU-second by GPU
# type, the GPU alone: a container's CPU and memory are billed on top (https://modal.com/pricing).
LLM_PRICES_PER_MTOK = PRICES_PER_MTOK
GPU_PRICES_PER_SECOND: tuple[tuple[str, float], ...] = (
    ("B200", 0.001736),
    ("H200", 0.001261),
    ("H100", 0.001097),
    ("A100-80GB", 0.000694),
    ("A100", 0.000583),
    ("L40S", 0.000542),
    ("A10G", 0.000306),
    ("L4", 0.000222),
    ("T4", 0.000164),
)


class Settings(BaseSettings):
    """dhgq's configuration; see the README's configuration table."""

    # frozen: built once and passed around, never changed; hashable, so that a model host keys its
    # per-process backend on it
    model_config = SettingsConfigDict(
        env_prefix="DHGQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # Database: unset means "start the embedded PostgreSQL server under home".
    database_url: SecretStr | None = None
    home: Path = Field(default_factory=lambda: Path(user_data_dir("dhgq")))
    db_connect_timeout: float = 10.0
    pg_bin_dir: Path | None = Field(None, description="PostgreSQL binaries for the embedded server")

    # Files
    storage_root: Path | None = None
    temp_dir: Path | None = None

    # Retention: what `dhgq gc` and the worker's daily dhgq.gc task remove (see dhgq/gc.py)
    keep_audio_days: int = Field(
        7, ge=0, description="days the extracted audio of a finished (completed or failed) source is kept"
    )
    keep_jobs_days: int = Field(30, ge=0, description="days finished Procrastinate jobs and their events are kept")
    keep_leftovers_hours: int = Field(
        24, ge=0, description="hours before scratch leftovers and audio files no row references are removed"
    )
    gc_periodic: bool = Field(True, description="whether the worker's daily dhgq.gc task collects")

    # Sources that are not local files: storage://BUCKET/KEY (Supabase Storage), gdrive://FILE_ID
    # (Google Drive), https:// URLs. Downloads stream into the temp dir, within these limits.
    supabase_url: str | None = Field(None, description="the project's URL, https://<ref>.supabase.co")
    supabase_service_key: SecretStr | None = Field(None, description="the service_role key: the worker's own")
    storage_bucket: str = Field("media", description="bucket of users' media (dhgq.config's storage_bucket)")
    upload_outputs: bool = Field(False, description="upload the exports (srt, vtt, json, md) next to the source")
    max_source_bytes: int = Field(8 * 1024**3, gt=0, description="largest source file fetched, in bytes")
    fetch_timeout: float = Field(60.0, gt=0, description="seconds without progress before a download fails")
    gdrive_service_account_file: Path | None = Field(None, description="a Google service account's JSON key")
    gdrive_api_url: str = Field("https://www.googleapis.com", description="the Drive API (tests: a local server)")
    allow_private_hosts: tuple[str, ...] = Field(
        (),
        description="hosts or networks (CIDR) that https sources and webhooks may reach although they are "
        "private, loopback or link-local (refused by default)",
    )

    # Artifacts: what one stage makes and a later stage reads (the extracted audio), kept under a URI in an
    # artifact store that every worker machine reaches, and fetched into a bounded cache on each machine.
    artifact_store: Literal["auto", "local", "storage"] = Field(
        "auto",
        description="local: the work dir (one machine); storage: Supabase Storage's artifact bucket (any number "
        "of machines); auto: storage when DHGQ_SUPABASE_URL and DHGQ_SUPABASE_SERVICE_KEY are set, else local",
    )
    artifact_bucket: str = Field("dhgq-artifacts", description="private bucket of the artifacts (service key only)")
    artifact_part_bytes: int = Field(
        32 * 1024**2, ge=64 * 1024, description="largest object an artifact is stored in; larger ones go in parts"
    )
    cache_dir: Path | None = Field(None, description="this machine's cache of fetched artifacts; default home/cache")
    cache_max_bytes: int = Field(
        20 * 1024**3, ge=0, description="the cache's size; least recently used artifacts go beyond it"
    )
    host_name: str = Field(
        default_factory=socket.gethostname, description="this machine's name in dhgq status and stage rows"
    )

    # Webhooks: a request's callback_url is called when its pipeline completes or fails
    webhook_secret: SecretStr | None = Field(None, description="signs webhook bodies (HMAC-SHA256)")
    # (issue 23) Standard Webhooks: users' own secrets sign their callbacks; the one above signs only the
    # callbacks the operator set (service role, CLI). One attempt's total time, and the waits between attempts.
    webhook_timeout: float = Field(
        10.0, gt=0, description="seconds one delivery attempt may take in all: connect, send, and the answer's head"
    )
    webhook_retry_schedule: tuple[float, ...] = Field(
        (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0),
        description="seconds to wait before each retry of a failed delivery (JSON list; its length is the number "
        "of retries): Standard Webhooks' and Svix's 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h by default",
    )

    # Queues: one worker-side concurrency per stage; the seeds' MAX_CONCURRENT_* defaults, except
    # that transcription and diarization on this machine's CPU (see concurrency()) default to
    # one job per ~4 cores: each job already uses several cores, so more slots only add memory.
    max_concurrent_extractions: int = Field(5, ge=1)
    max_concurrent_transcriptions: int | None = Field(None, ge=1, description="default: see concurrency()")
    max_concurrent_diarizations: int | None = Field(None, ge=1, description="default: see concurrency()")
    max_concurrent_summarizations: int = Field(2, ge=1)
    model_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per local model job; default: "
        "the cores shared out among the transcription and diarization slots",
    )
    max_attempts: int = Field(3, ge=1)
    retry_base_delay: int = Field(2, ge=0, description="seconds; doubles per attempt")
    stage_timeout_base: float = Field(120.0, gt=0, description="seconds per stage, plus the factor below")
    stage_timeout_per_audio_second: float = Field(2.0, ge=0)
    stalled_after: float = Field(30.0, gt=0, description="seconds without a worker heartbeat")
    progress_every: float = Field(2.0, gt=0, description="seconds between progress writes of a running model stage")

    # Models
    whisper_engine: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    whisper_model: str = Field(
        "auto",
        description="auto: whisper_english_model when the language is English, else whisper_multilingual_model; "
        "or a model name, or a CTranslate2 model directory",
    )
    whisper_compute_type: str = "int8"
    whisper_language: str | None = None
    diarization_engine: Literal["local", "pyannote"] = "local"
    models_dir: Path | None = None

    # GPU offload
    gpu_backend: Literal["local", "modal", "auto"] = "local"
    modal_app_name: str = "dhgq-gpu"
    modal_gpu: str = "A10G"
    modal_whisper_model: str = Field("turbo", description="Whisper model of the Modal app, loaded at its start")
    modal_max_containers: int = Field(
        5, ge=1, description="GPU containers each Modal GPU class may run at once (two classes: within 10 GPUs)"
    )
    modal_diarization_engine: Literal["local", "pyannote"] = Field(
        "local",
        description="diarizer of the Modal app: dhgq's own (no token), or pyannote (deployed only when asked for; "
        "needs the dhgq-huggingface secret)",
    )
    modal_cold_start_seconds: float = Field(
        300.0, ge=0, description="added to the model stages' time limit on Modal: an image and weights to load"
    )

    # Summaries
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DHGQ_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_model: str = "claude-sonnet-4-5"
    anthropic_base_url: str | None = Field(
        None, validation_alias=AliasChoices("DHGQ_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL")
    )
    anthropic_max_input_tokens: int = Field(
        150_000, ge=1, description="tokens per Claude request; a longer transcript is summarised in chunks"
    )

    # Cost: the ledger prices every paid call with these tables; the budgets' caps themselves live in
    # dhgq.config (`dhgq budget set`), so that raising one needs no worker restart.
    llm_prices: tuple[tuple[str, float, float], ...] = Field(
        LLM_PRICES_PER_MTOK,
        description="JSON list of [model prefix, USD per million input tokens, per million output tokens]; "
        "the first matching prefix wins",
    )
    gpu_prices: tuple[tuple[str, float], ...] = Field(
        GPU_PRICES_PER_SECOND, description="JSON list of [Modal GPU type, USD per GPU-second]"
    )
    budget_recheck_seconds: int = Field(
        900, ge=1, description="seconds between budget checks of a stage waiting for budget (a new day frees it)"
    )

    # Observability and queue controls: a worker's Prometheus endpoint (one port per worker process), its
    # OpenTelemetry spans (where a collector is configured, by OpenTelemetry's own variables), extraction's
    # free-space floor, and how the Claude API's requests to wait are honoured (dhgq/waits.py).
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="the worker's Prometheus endpoint (each worker process its own port)"
    )
    metrics_addr: str = Field("0.0.0.0", description="address the Prometheus endpoint listens on")
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("DHGQ_OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="an OTLP/HTTP collector's base URL (spans go to <url>/v1/traces); unset: no tracing",
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices("DHGQ_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        description="the collector's traces URL, as given (wins over the base URL)",
    )
    otel_service_name: str = Field(
        "dhgq-worker",
        validation_alias=AliasChoices("DHGQ_OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME"),
        description="service.name of the worker's spans",
    )
    min_free_disk_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="extraction waits while the work, temp or cache dir has less free space (0: never)",
    )
    disk_recheck_seconds: int = Field(30, ge=1, description="seconds between free-space checks of a held extraction")
    api_max_waits: int = Field(
        20, ge=0, description="times a stage waits for a rate-limited API before it fails (waits are not attempts)"
    )
    api_max_wait_seconds: float = Field(
        3600.0, gt=0, description="the longest Retry-After honoured; a longer one is cut to this"
    )

    # (issue 25) Drive folders watched for new talks, and the Whisper model when the request names none
    drive_watch_seconds: int = Field(
        60, ge=10, description="seconds between two checks of a watched Drive folder (dhgq drive watch)"
    )
    whisper_english_model: str = Field(
        "tiny.en",
        description="DHGQ_WHISPER_MODEL=auto: the model when the language is English (the request's or "
        "DHGQ_WHISPER_LANGUAGE)",
    )
    whisper_multilingual_model: str = Field(
        "base",
        description="DHGQ_WHISPER_MODEL=auto: the model when the language is another or unknown (detected); "
        "the English one when this is not installed",
    )

    # Logs
    log_level: str = "INFO"
    log_json: bool = False

    def concurrency(self, stage: Stage) -> int:
        """Worker-side concurrency of one stage's queue.

        Unset, the model stages take the seeds' 2 when they run on Modal (a slot only waits on a
        remote GPU) and otherwise one slot per 4 CPU cores, at most 2: a local model job already
        keeps several cores busy, and each slot is a model process of 0.3-0.6 GB.
        """
        configured = {
            "extraction": self.max_concurrent_extractions,
            "transcription": self.max_concurrent_transcriptions,
            "diarization": self.max_concurrent_diarizations,
            "summarization": self.max_concurrent_summarizations,
        }[stage]
        if configured is not None:
            return configured
        if self.gpu_backend == "modal":
            return SEED_MODEL_CONCURRENCY
        return max(1, min(SEED_MODEL_CONCURRENCY, (os.cpu_count() or 1) // 4))

    def threads_per_model_job(self) -> int:
        """CPU threads for one local transcription or diarization job in a worker.

        Both stages run side by side, each with its slots; their thread pools together should
        fill the cores, not oversubscribe them (spinning OpenMP threads then starve each other).
        """
        if self.model_threads is not None:
            return self.model_threads
        slots = self.concurrency("transcription") + self.concurrency("diarization")
        return max(1, (os.cpu_count() or 1) // slots)

    def stage_timeout(self, audio_seconds: float | None) -> float:
        """A stage's time limit, scaled by the length of the audio it works on.

        A model stage (one given its audio's length) that may run on Modal gets the cold-start
        allowance on top: a first call waits for a GPU container, its image and its weights.
        """
        limit = self.stage_timeout_base + self.stage_timeout_per_audio_second * (audio_seconds or 0.0)
        if audio_seconds is not None and self.gpu_backend != "local":
            limit += self.modal_cold_start_seconds
        return limit

    @property
    def work_dir(self) -> Path:
        """Where extracted audio is kept: the storage root when set, else dhgq's home."""
        return (self.storage_root or self.home) / "audio"

    @property
    def scratch_dir(self) -> Path:
        return self.temp_dir or self.home / "tmp"

    @property
    def artifact_cache_dir(self) -> Path:
        return self.cache_dir or self.home / "cache" / "artifacts"

    def artifact_backend(self) -> Literal["local", "storage"]:
        """The artifact store these settings select (``auto``: Storage once the service key is configured)."""
        if self.artifact_store != "auto":
            return self.artifact_store
        return "storage" if self.supabase_url and self.supabase_service_key is not None else "local"

    def traces_endpoint(self) -> str | None:
        """Where spans go (OTLP over HTTP), or None: tracing is off."""
        if self.otel_exporter_otlp_traces_endpoint:
            return self.otel_exporter_otlp_traces_endpoint
        if self.otel_exporter_otlp_endpoint:
            return self.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``."""
    return Settings()
