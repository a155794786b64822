"""Storage object keys as dhgq uses them: checked once, then used exactly as written.

A key is never percent-decoded, normalised or trimmed on its way to Storage, so the key the
database checked (``dhgq.user_object_uri_v1``) is the key the worker fetches and writes next to.
What could make two readers see two different keys is refused instead of interpreted:

- ``%`` (a percent-escape: ``%2e%2e`` is ``..`` to whoever decodes it), ``?`` and ``#`` (a
  query or a fragment to whoever parses the key as a URL), ``\\`` (a separator on some systems);
- control characters, Unicode format characters (zero-width, direction overrides such as U+202E
  that show a key other than the one stored) and line or paragraph separators;
- empty, ``.`` and ``..`` segments, and a leading ``/``.

The same ranges are written into the migration ``20261204001000_storage_keys.sql``;
``tests/integration/test_storage_keys.py`` checks the two agree on every code point they name.
"""

from __future__ import annotations

import re
import unicodedata

from dhgq.errors import PermanentError

MAX_KEY_LENGTH = 1024
REFUSED_ASCII = {"%": "a percent-escape (%)", "?": "a '?'", "#": "a '#'", "\\": "a backslash"}
REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}  # control, format (incl. bidi), line and paragraph separators
# Unicode 15.1's Cc, Cf, Zl and Zp, so that an older unicodedata refuses what a newer one would
REFUSED_RANGES: tuple[tuple[int, int], ...] = (
    (0x0000, 0x001F),
    (0x007F, 0x009F),
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)
BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def refused_character(char: str) -> str | None:
    """Why ``char`` may not be in a key (a short phrase), or None when it may."""
    if char in REFUSED_ASCII:
        return REFUSED_ASCII[char]
    code = ord(char)
    if unicodedata.category(char) in REFUSED_CATEGORIES or any(lo <= code <= hi for lo, hi in REFUSED_RANGES):
        return f"a control or invisible formatting character (U+{code:04X})"
    return None


def check_object_key(key: str, *, uri: str) -> str:
    """``key`` itself when dhgq may fetch or write it as it is; PermanentError (naming ``uri``) otherwise."""
    if not key:
        raise PermanentError(f"{uri}: the object key is empty", file=uri)
    if len(key) > MAX_KEY_LENGTH:
        raise PermanentError(f"{uri}: the object key is longer than {MAX_KEY_LENGTH} characters", file=uri)
    for char in key:
        reason = refused_character(char)
        if reason is not None:
            raise PermanentError(
                f"{uri}: the object key contains {reason}; keys are used exactly as written, "
                "never decoded, so these are refused",
                file=uri,
            )
    if key.startswith("/") or any(segment in ("", ".", "..") for segment in key.split("/")):
        raise PermanentError(f"{uri}: the object key has an empty, '.' or '..' segment", file=uri)
    return key


def parse_storage_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``storage://BUCKET/KEY``, the key verbatim and checked; PermanentError otherwise."""
    scheme, sep, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() != "storage" or not BUCKET.fullmatch(bucket) or not key:
        raise PermanentError(f"{uri}: not a storage://BUCKET/KEY URI", file=uri)
    return bucket, check_object_key(key, uri=uri)


def owner_folder(key: str) -> str | None:
    """The first segment of a key (a user's folder, ``<user id>``), None for a key at the bucket's top."""
    folder, sep, _ = key.partition("/")
    return folder if sep else None
