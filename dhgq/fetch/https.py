"""``https://`` sources: any web server, never one inside the worker's own network."""

from __future__ import annotations

from pathlib import Path

from dhgq.fetch.files import Fetched, target_name
from dhgq.fetch.http import download
from dhgq.netguard import Guard
from dhgq.settings import Settings


def download_url(url: str, scratch: Path, settings: Settings) -> Fetched:
    target = scratch / target_name(url)
    sha256, size = download(
        url,
        target,
        source=url,
        max_bytes=settings.max_source_bytes,
        timeout=settings.fetch_timeout,
        guard=Guard(settings.allow_private_hosts, "source"),
    )
    return Fetched(target, sha256, size, remote=True)
