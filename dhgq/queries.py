"""Named SQL from the ``dhgq/sql/*.sql`` files: every runtime query lives there, under a name."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

# dhgq.listen_stages_v1 registrations lapse after 30 s: listeners renew them this often
LISTEN_RENEW_SECONDS = 10.0

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@lru_cache(maxsize=1)
def _load() -> dict[str, str]:
    named: dict[str, str] = {}
    for sql_file in sorted(files("dhgq").joinpath("sql").iterdir(), key=lambda f: f.name):
        if not sql_file.name.endswith(".sql"):
            continue
        parts = _HEADER.split(sql_file.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in named:
                raise ValueError(f"query {name} is defined twice ({sql_file.name})")
            named[name] = body.strip()
    return named


def query(name: str) -> str:
    """The SQL text of one named query; a KeyError names a query that does not exist."""
    return _load()[name]
