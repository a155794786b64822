"""The import rules the package layout implies, checked on the source text (no imports, no database).

The layout only means something while the arrows point one way: the stage functions in
``dhgq/media`` stay pure (no queue, database, settings or UI), so they run in any worker and in
Modal's image; the CLI and the monitor do not reach into each other's internals; and
``modal_gpu`` stays importable in an image that has neither psycopg, Procrastinate nor pydantic.
The files are parsed with ``ast`` rather than imported, so function-level and TYPE_CHECKING
imports count too, and a violation names its file and line.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Import:
    """One import statement and the modules it may load, fully qualified and with relative imports resolved.

    ``from a.b import c`` may load ``a.b.c`` (c may be a submodule), so it counts as ``a.b.c``: that
    keeps ``from dhgq.tui import app`` apart from ``from dhgq.tui import snapshot``.
    """

    path: Path
    line: int
    statement: str
    names: tuple[str, ...]
    resolved: str = ""  # the absolute module a relative ``from`` names, to show next to the statement

    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"


@dataclass(frozen=True)
class Rule:
    """Files under ``package`` import nothing under ``forbidden``, except what lies under ``allowed``."""

    package: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()

    def breaks(self, name: str) -> bool:
        return within(name, self.forbidden) and not within(name, self.allowed)


RULES = {
    "media is pure": Rule(
        "dhgq.media",
        (
            "psycopg",
            "psycopg_pool",
            "procrastinate",
            "modal",
            "textual",
            "dhgq.settings",
            "dhgq.db",
            "dhgq.pipeline",
            "dhgq.tasks",
            "dhgq.app",
            "dhgq.worker",
            "dhgq.cli",
            "dhgq.tui",
            "dhgq.gpu",
        ),
    ),
    # the monitor command starts the app through its factory, and only through it
    "cli uses the tui only through its app": Rule("dhgq.cli", ("dhgq.tui",), allowed=("dhgq.tui.app",)),
    "tui does not use the cli": Rule("dhgq.tui", ("dhgq.cli",)),
    "modal_gpu runs without the database stack": Rule(
        "modal_gpu",
        (
            "psycopg",
            "psycopg_pool",
            "procrastinate",
            "dhgq.db",
            "dhgq.pipeline",
            "dhgq.tasks",
            "dhgq.app",
            "dhgq.worker",
            "dhgq.queries",
            "dhgq.settings",
        ),
    ),
}


def within(name: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or lies below one (``psycopg.sql``, not ``psycopgx``)."""
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def module_name(path: Path) -> str:
    """The dotted module a file under ROOT defines; a package's ``__init__`` is the package itself."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool = False, path: Path = ROOT) -> Iterator[Import]:
    """Every import statement of ``source``, in functions and ``if TYPE_CHECKING:`` too, in line order."""
    package = module if is_package else module.rpartition(".")[0]
    nodes = (node for node in ast.walk(ast.parse(source, filename=str(path))) if isinstance(node, ast.stmt))
    for node in sorted(nodes, key=lambda node: node.lineno):
        if isinstance(node, ast.Import):
            yield Import(path, node.lineno, ast.unparse(node), tuple(alias.name for alias in node.names))
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node.module, node.level, package)
            names = tuple(base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names)
            yield Import(path, node.lineno, ast.unparse(node), names, base if node.level else "")


def resolve(module: str | None, level: int, package: str) -> str:
    """The absolute module of ``from <dots><module> import ...`` written in ``package``."""
    if level == 0:
        return module or ""
    parts = package.split(".")
    if level - 1 >= len(parts):
        raise ValueError(f"relative import beyond the top-level package {package!r}")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def package_imports(package: str) -> Iterator[Import]:
    """The imports of every Python file of a package (a dotted name, a folder under ROOT)."""
    folder = ROOT.joinpath(*package.split("."))
    assert folder.is_dir(), f"{folder} is missing: the layout rules name a package that no longer exists"
    for path in sorted(folder.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        yield from imports(source, module_name(path), is_package=path.name == "__init__.py", path=path)


def violations(rule: Rule, found: Iterable[Import]) -> list[str]:
    """One line per statement that breaks ``rule``: file:line, the statement, and the forbidden modules it loads."""
    lines: list[str] = []
    for item in found:
        if any(rule.breaks(name) for name in item.names):
            resolved = f"  (from {item.resolved})" if item.resolved else ""
            lines.append(f"{item.where()}: {item.statement}{resolved}")
    return lines


@pytest.mark.parametrize("title", list(RULES))
def test_layout_rule(title: str) -> None:
    rule = RULES[title]
    broken = violations(rule, package_imports(rule.package))
    assert not broken, f"{title}: {len(broken)} forbidden import(s)\n" + "\n".join(f"  {line}" for line in broken)


SYNTHETIC = '''
"""A media module that breaks the rules every way the checker must notice."""
from __future__ import annotations

import json
import psycopg.sql
from typing import TYPE_CHECKING

from ..settings import Settings
from .. import db
from . import types

if TYPE_CHECKING:
    from procrastinate import App


def late() -> None:
    from dhgq.tui import app
'''


def test_checker_catches_violations() -> None:
    """The checker must see dotted, relative, conditional and function-level imports, or a green test means nothing."""
    path = ROOT / "dhgq" / "media" / "example.py"
    broken = violations(RULES["media is pure"], imports(SYNTHETIC, "dhgq.media.example", path=path))
    assert broken == [
        "dhgq/media/example.py:6: import psycopg.sql",
        "dhgq/media/example.py:9: from ..settings import Settings  (from dhgq.settings)",
        "dhgq/media/example.py:10: from .. import db  (from dhgq)",
        "dhgq/media/example.py:14: from procrastinate import App",
        "dhgq/media/example.py:18: from dhgq.tui import app",
    ]


def test_checker_resolves_imports() -> None:
    found = imports(SYNTHETIC, "dhgq.media.example")
    names = {name for item in found for name in item.names}
    assert {"json", "dhgq.media.types", "dhgq.settings.Settings", "dhgq.db"} <= names


def test_checker_resolves_relative_imports() -> None:
    assert resolve("types", 1, "dhgq.media") == "dhgq.media.types"
    assert resolve(None, 2, "dhgq.media.transcription") == "dhgq.media"
    assert resolve("settings", 3, "dhgq.media.transcription") == "dhgq.settings"
    with pytest.raises(ValueError):
        resolve("x", 3, "dhgq")


def test_checker_allows_the_exception() -> None:
    """``dhgq.tui.app`` (and names in it) pass the CLI rule; its siblings and the bare package do not."""
    source = "\n".join(
        [
            "from dhgq.tui import app",
            "from dhgq.tui.app import create_app",
            "import dhgq.tui.app",
            "from dhgq.tui import snapshot",
            "import dhgq.tui",
            "from ..tui.cells import stage_cell",
            "import dhgq.tuition",
        ]
    )
    path = ROOT / "dhgq" / "cli" / "example.py"
    broken = violations(RULES["cli uses the tui only through its app"], imports(source, "dhgq.cli.example", path=path))
    assert broken == [
        "dhgq/cli/example.py:4: from dhgq.tui import snapshot",
        "dhgq/cli/example.py:5: import dhgq.tui",
        "dhgq/cli/example.py:6: from ..tui.cells import stage_cell  (from dhgq.tui.cells)",
    ]
