"""Let one user pass through directories without opening them to everyone else.

As root, dhgq runs its embedded PostgreSQL server as an unprivileged user (PostgreSQL refuses
root), and that user must reach ``DHGQ_HOME/pg`` through directories such as ``/root`` (0700).
Adding search permission for "others" (o+x) would let every account on the machine through; a
POSIX ACL entry ``user:<that user>:--x`` lets that one user through and nobody else, and leaves
the owner's, the group's and others' rights as they were (``ls -l`` shows a ``+``).

The ACL is written as Linux stores it (the ``system.posix_acl_access`` extended attribute), so no
``setfacl`` needs to be installed. A file system without ACLs gets a ConfigurationError that says
what to do instead.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import struct
from pathlib import Path

from dhgq.errors import ConfigurationError

ACL_XATTR = "system.posix_acl_access"
ACL_VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
NO_ID = 0xFFFFFFFF
EXECUTE = 0x1
Entry = tuple[int, int, int]  # (tag, permissions, id)


def grant_traversal(directory: Path, user: pwd.struct_passwd) -> None:
    """Let ``user`` search ``directory`` and each of its parents it cannot search yet, and no one else."""
    for path in (directory, *directory.parents):
        if not can_traverse(path, user):
            _grant_execute(path, user)


def can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` may search ``path``: by its owner, group or other bits, or an ACL entry of theirs."""
    info = path.stat()
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode & stat.S_IXUSR)
    entries = _read_acl(path)
    named = [perm for tag, perm, uid in entries if tag == USER and uid == user.pw_uid]
    if named:
        mask = next((perm for tag, perm, _ in entries if tag == MASK), 0o7)
        return bool(named[0] & mask & EXECUTE)
    if info.st_gid in _groups_of(user):
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _grant_execute(path: Path, user: pwd.struct_passwd) -> None:
    entries = _read_acl(path) or _acl_of_mode(path.stat().st_mode)
    named = {(tag, uid): perm for tag, perm, uid in entries}
    named[(USER, user.pw_uid)] = named.get((USER, user.pw_uid), 0) | EXECUTE
    # the mask bounds the named entries and the group's: it keeps what it allowed (without an ACL, the
    # group's own bits) and lets the new entry through
    mask = named.get((MASK, NO_ID))
    group_class = [perm for (tag, _), perm in named.items() if tag in (USER, GROUP_OBJ, GROUP)]
    named[(MASK, NO_ID)] = (mask if mask is not None else _union(group_class)) | EXECUTE
    acl = sorted(((tag, perm, uid) for (tag, uid), perm in named.items()), key=lambda e: (e[0], e[2]))
    try:
        os.setxattr(path, ACL_XATTR, _encode(acl))
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            raise
        raise ConfigurationError(
            f"the embedded PostgreSQL server runs as {user.pw_name!r} (PostgreSQL refuses root), which cannot "
            f"reach {path}, and that file system does not take ACLs ({exc.strerror}): set DHGQ_HOME to a "
            f"directory {user.pw_name!r} can reach, or give it search permission there yourself"
        ) from None


def _acl_of_mode(mode: int) -> list[Entry]:
    """The minimal ACL a plain mode stands for."""
    return [(USER_OBJ, (mode >> 6) & 7, NO_ID), (GROUP_OBJ, (mode >> 3) & 7, NO_ID), (OTHER, mode & 7, NO_ID)]


def _read_acl(path: Path) -> list[Entry]:
    try:
        raw = os.getxattr(path, ACL_XATTR)
    except OSError:
        return []
    (version,) = struct.unpack_from("<I", raw)
    if version != ACL_VERSION:
        return []
    return [struct.unpack_from("<HHI", raw, offset) for offset in range(4, len(raw), 8)]


def _encode(entries: list[Entry]) -> bytes:
    return struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


def _union(perms: list[int]) -> int:
    result = 0
    for perm in perms:
        result |= perm
    return result


def _groups_of(user: pwd.struct_passwd) -> set[int]:
    return set(os.getgrouplist(user.pw_name, user.pw_gid))
