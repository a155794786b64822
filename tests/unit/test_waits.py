"""Extraction's free-space floor: which directory is short, said in a sentence that names the setting."""

from __future__ import annotations

from pathlib import Path

from dhgq.settings import Settings
from dhgq.waits import disk_shortage


def test_below_the_floor_the_shortage_names_the_directory_and_the_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home-not-made-yet", min_free_disk_bytes=10**18)
    shortage = disk_shortage(settings)
    assert shortage is not None
    assert f"the work dir {tmp_path / 'home-not-made-yet' / 'audio'} has" in shortage
    assert "below the floor of 931322574.6 GiB (DHGQ_MIN_FREE_DISK_BYTES)" in shortage


def test_above_the_floor_or_without_one_nothing_waits(tmp_path: Path) -> None:
    assert disk_shortage(Settings(home=tmp_path, min_free_disk_bytes=1)) is None
    assert disk_shortage(Settings(home=tmp_path, min_free_disk_bytes=0)) is None
