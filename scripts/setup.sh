#!/usr/bin/env bash
# Everything dhgq needs on a fresh Debian machine, idempotent: system packages (ffmpeg, espeak-ng,
# sox, PostgreSQL's server binaries for the embedded database, Node.js), the Supabase CLI from the
# npm registry (package.json, pinned by package-lock.json), a virtual environment with the CPU
# build of torch installed first, then dhgq with its dev extra. Every pip call gets constraints.txt,
# which pins torch so no dependency can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${DHGQ_VENV:-.venv}
PIP=("$VENV/bin/python" -m pip)

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pgbench >/dev/null || need+=(postgresql-contrib)
command -v redis-server >/dev/null || need+=(redis-server)   # only the benchmarks' BullMQ contender
command -v npm >/dev/null || need+=(nodejs npm)               # the Supabase CLI the tests run
if ((${#need[@]})); then
    echo "setup: installing system packages: ${need[*]}" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    if command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "setup: no apt-get; install ${need[*]} yourself (dhgq falls back to imageio-ffmpeg and pgserver)" >&2
    fi
fi

# The Supabase CLI (supabase db push / migration list), at the version package-lock.json pins.
want_cli=$(sed -n 's/.*"supabase": "\([0-9.]*\)".*/\1/p' package.json)
if [ "$(node_modules/.bin/supabase --version 2>/dev/null)" != "$want_cli" ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.dhgq-setup"
digest=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    exit 0
fi
"${PIP[@]}" install -q --upgrade pip
# torch first, the CPU build pinned in constraints.txt
"${PIP[@]}" install -q -c constraints.txt "torch==2.13.0"
"${PIP[@]}" install -q -c constraints.txt -e ".[dev]"
# openai-whisper without triton (about 1 GB, unused on CPU): the package itself without its
# dependencies, then the ones it really needs on a CPU.
"${PIP[@]}" install -q -c constraints.txt more-itertools tiktoken numba tqdm
"${PIP[@]}" install -q -c constraints.txt --no-deps "openai-whisper==20250625"
echo "$digest" > "$stamp"
