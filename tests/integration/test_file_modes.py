"""What dhgq writes to disk is its user's alone: extracted audio 0600 in 0700 directories, whatever the
umask; and the embedded server, started as root, reaches DHGQ_HOME without opening its parents to the
other accounts of the machine (checked as ``nobody``, by a real process)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dhgq.embedded import EmbeddedServer, _service_user
from dhgq.media.extraction.extract import extract_audio
from dhgq.traversal import can_traverse
from tests.support.speech import to_mp4


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022: without care, files come out 0644 and directories 0755."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_extracted_audio_is_private(tmp_path: Path, open_umask: None) -> None:
    tone = tmp_path / "tone.wav"
    seconds = np.arange(16_000 * 2) / 16_000
    sf.write(tone, 0.3 * np.sin(2 * np.pi * 440 * seconds), 16_000)
    talk = to_mp4(tone, tmp_path / "talk.mp4", video=False)
    work = tmp_path / "home" / "audio"

    result = extract_audio(talk, work / "source-id", stem="audio")

    assert mode(work) == 0o700 and mode(work / "source-id") == 0o700
    written = [Path(result.wav_path)] + ([Path(result.compact_path)] if result.compact_path else [])
    assert len(written) == 2 and {mode(path) for path in written} == {0o600}


def reaches(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether a process of ``user`` can stat ``path`` (a real permission check, not a reading of mode bits)."""

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setgroups([])
        os.setuid(user.pw_uid)

    done = subprocess.run(["stat", str(path)], capture_output=True, text=True, preexec_fn=demote, timeout=30)
    assert done.returncode == 0 or "Permission denied" in done.stderr, done.stderr
    return done.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded server runs as another user only when dhgq is root")
def test_as_root_the_server_reaches_home_without_opening_its_parents() -> None:
    parent = Path(tempfile.mkdtemp(prefix="dhgq-test-private-"))  # 0700, like /root
    home = parent / "dhgq"
    server = EmbeddedServer(home)
    try:
        assert server.start().port > 0
        nobody, service = pwd.getpwnam("nobody"), _service_user()
        assert service is not None

        # others: nothing, as before (the group bits show the ACL's mask; the group itself gets nothing)
        assert mode(parent) & 0o007 == 0 and mode(home) & 0o007 == 0 and mode(home / "pg") == 0o700
        assert not can_traverse(parent, nobody) and can_traverse(parent, service)
        assert not reaches(nobody, home / "pg") and reaches(service, home / "pg")
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)
