"""A stand-in for an open monitor: LISTENs on dhgq_stages the way ``dhgq monitor`` does and reads
every notification, until killed. Run as its own process (``python -m bench.listener URL``) so
that reading the notifications does not share the bench process's GIL."""

from __future__ import annotations

import sys

from dhgq.status import follow_stages


def listen_forever(url: str) -> None:
    with follow_stages(url) as changes:
        while True:
            changes.wait(1.0)


if __name__ == "__main__":
    listen_forever(sys.argv[1])
