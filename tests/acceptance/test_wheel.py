"""dhgq as users install it: a wheel, run outside the checkout, must carry every file it reads at run time.

The checkout hides packaging mistakes (the code finds ``supabase/migrations`` and ``modal_gpu`` next to
itself), so the wheel is built, installed into a fresh virtual environment and run from an empty
directory: ``dhgq db migrate`` must apply every migration and ``dhgq demo`` must process a talk. The
dependencies (torch and the speech models, gigabytes) are not installed again: a ``.pth`` file puts this
environment's site-packages behind the new one's. Python does not process the ``.pth`` files of a directory
named that way, so the checkout's editable-install finder stays off and ``import dhgq`` is the wheel's copy
(asserted, since the whole test is worthless otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from dhgq import migrations

REPO = Path(__file__).resolve().parents[2]
PACKAGED = ("dhgq", "modal_gpu")  # the top-level packages of the wheel, as directories of the checkout
MIGRATIONS = "supabase/migrations"  # shipped as dhgq/_migrations (pyproject's package-dir)


def source_files() -> list[str]:
    """What git would commit (tracked or new, not ignored) and is on disk: the files a wheel is built from."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to tell source files from build outputs")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split("\0")
    return sorted({name for name in listed if name and (REPO / name).is_file()})


def runtime_files() -> set[str]:
    """The paths the wheel must hold: the packages' files, and the migrations under their package name."""
    expected = set()
    for name in source_files():
        path = PurePosixPath(name)
        if path.parts[0] in PACKAGED:
            expected.add(name)
        elif str(path.parent) == MIGRATIONS and path.suffix == ".sql":
            expected.add(f"dhgq/_migrations/{path.name}")
    return expected


def test_every_package_is_listed_in_pyproject() -> None:
    """pyproject lists its packages (``packages.find`` cannot see a mapped one): a new directory must be added."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"dhgq._migrations": MIGRATIONS}
    directories = {
        str(PurePosixPath(name).parent) for name in runtime_files() if not name.startswith("dhgq/_migrations/")
    }
    assert sorted(setuptools["packages"]) == sorted({d.replace("/", ".") for d in directories} | {"dhgq._migrations"})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the source files, so no build/ or egg-info lands in the checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, source],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = dist.glob("dhgq-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_holds_every_runtime_file(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if ".dist-info/" not in name}
    expected = runtime_files()
    assert len([name for name in expected if name.startswith("dhgq/_migrations/")]) == len(migrations.discover())
    assert not expected - shipped, f"missing from the wheel: {sorted(expected - shipped)}"
    assert not shipped - expected, f"in the wheel but not source files: {sorted(shipped - expected)}"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed; this environment's packages behind it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    Path(site, "dhgq-test-dependencies.pth").write_text("".join(f"{path}\n" for path in ours), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv


@pytest.fixture
def outside(installed: Path, tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An empty working directory and an environment with a fresh DHGQ_HOME and no database URL.

    Every ``DHGQ_*`` variable is dropped (one could point at a database or at Modal) and ``PYTHONPATH`` too
    (it could make the checkout importable). The embedded server is stopped afterwards, whatever happened.
    """
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DHGQ_")}
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(key, None)
    env |= {
        "DHGQ_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{installed / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    yield cwd, env
    subprocess.run([installed / "bin" / "dhgq", "db", "stop"], cwd=cwd, env=env, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_installed_wheel_migrates_and_runs_the_demo(installed: Path, outside: tuple[Path, dict[str, str]]) -> None:
    cwd, env = outside
    python, dhgq = installed / "bin" / "python", installed / "bin" / "dhgq"

    def run(*args: str | Path, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    where = run(
        python,
        "-c",
        textwrap.dedent(
            """
            import importlib.util
            import dhgq
            from dhgq import migrations, modal_deploy
            print(dhgq.__file__)
            print(migrations.migrations_dir())
            print(modal_deploy.app_source())
            print(*importlib.util.find_spec("modal_gpu").submodule_search_locations)
            """
        ),
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    package, migrations_dir, app_source, modal_gpu = (Path(line) for line in where.stdout.splitlines())
    for path in (package, migrations_dir, app_source, modal_gpu):
        assert path.is_relative_to(installed), f"{path} is not the wheel's copy (under {installed})"
    assert migrations_dir == package.parent / "_migrations"
    assert (app_source / "modal_gpu" / "app.py").is_file() and (modal_gpu / "app.py").is_file()

    migrated = run(dhgq, "db", "migrate", "--json", timeout=300)
    assert migrated.returncode == 0, migrated.stderr
    applied = json.loads(migrated.stdout)["applied"]
    assert applied == [f"{m.version}_{m.name}" for m in migrations.discover()]

    demo = run(dhgq, "demo", timeout=900)
    assert demo.returncode == 0, f"stdout:\n{demo.stdout[-3000:]}\nstderr:\n{demo.stderr[-3000:]}"
    assert "schema: up to date" in demo.stderr
    transcript = demo.stdout.split("Transcript (start)", 1)
    assert len(transcript) == 2 and "[00:00:00]" in transcript[1], demo.stdout
    assert not list(cwd.iterdir()), "dhgq wrote into the working directory"
