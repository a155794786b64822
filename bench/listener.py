"""A stand-in for an open monitor: LISTENs on dhgq_stages the way ``dhgq monitor`` does and reads
every notification, until killed. Run as its own process (``python -m bench.listener URL``) so
that reading the notifications does not share the bench process's GIL."""

from __future__ import annotations

import sys
import time

import psycopg

REGISTER_EVERY = 10.0  # seconds; a registration lapses after 30


def listen_forever(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            conn.execute("SELECT dhgq.listen_stages_v1()")
            until = time.monotonic() + REGISTER_EVERY
            while time.monotonic() < until:
                for _ in conn.notifies(timeout=1.0):
                    pass


if __name__ == "__main__":
    listen_forever(sys.argv[1])
