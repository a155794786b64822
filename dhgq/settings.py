"""One typed Settings object for the whole of dhgq.

Every knob is a ``DHGQ_*`` environment variable (or a line in ``.env``); nothing else in the
package reads ``os.environ``. Secrets are ``SecretStr`` so that printing the settings, logging
them or showing them in the monitor never reveals a key or a database password.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_dir
from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Stage = Literal["extraction", "transcription", "diarization", "summarization"]
STAGES: tuple[Stage, ...] = ("extraction", "transcription", "diarization", "summarization")


class Settings(BaseSettings):
    """dhgq's configuration; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="DHGQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Database: unset means "start the embedded PostgreSQL server under home".
    database_url: SecretStr | None = None
    home: Path = Field(default_factory=lambda: Path(user_data_dir("dhgq")))
    db_connect_timeout: float = 10.0
    pg_bin_dir: Path | None = Field(None, description="PostgreSQL binaries for the embedded server")

    # Files
    storage_root: Path | None = None
    temp_dir: Path | None = None

    # Queues: the seeds' MAX_CONCURRENT_* defaults, one worker-side concurrency per stage.
    max_concurrent_extractions: int = Field(5, ge=1)
    max_concurrent_transcriptions: int = Field(2, ge=1)
    max_concurrent_diarizations: int = Field(2, ge=1)
    max_concurrent_summarizations: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1)
    retry_base_delay: int = Field(2, ge=0, description="seconds; doubles per attempt")
    stage_timeout_base: float = Field(120.0, gt=0, description="seconds per stage, plus the factor below")
    stage_timeout_per_audio_second: float = Field(2.0, ge=0)
    stalled_after: float = Field(30.0, gt=0, description="seconds without a worker heartbeat")

    # Models
    whisper_engine: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    whisper_model: str = "tiny.en"
    whisper_compute_type: str = "int8"
    whisper_language: str | None = None
    diarization_engine: Literal["local", "pyannote"] = "local"
    models_dir: Path | None = None

    # GPU offload
    gpu_backend: Literal["local", "modal", "auto"] = "local"
    modal_app_name: str = "dhgq-gpu"
    modal_gpu: str = "A10G"

    # Summaries
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DHGQ_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_model: str = "claude-sonnet-4-5"
    anthropic_base_url: str | None = Field(
        None, validation_alias=AliasChoices("DHGQ_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL")
    )

    # Logs
    log_level: str = "INFO"
    log_json: bool = False

    def concurrency(self, stage: Stage) -> int:
        """Worker-side concurrency of one stage's queue."""
        return {
            "extraction": self.max_concurrent_extractions,
            "transcription": self.max_concurrent_transcriptions,
            "diarization": self.max_concurrent_diarizations,
            "summarization": self.max_concurrent_summarizations,
        }[stage]

    def stage_timeout(self, audio_seconds: float | None) -> float:
        """A stage's time limit, scaled by the length of the audio it works on."""
        return self.stage_timeout_base + self.stage_timeout_per_audio_second * (audio_seconds or 0.0)

    @property
    def work_dir(self) -> Path:
        """Where extracted audio is kept: the storage root when set, else dhgq's home."""
        return (self.storage_root or self.home) / "audio"

    @property
    def scratch_dir(self) -> Path:
        return self.temp_dir or self.home / "tmp"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment and ``.env``."""
    return Settings()
