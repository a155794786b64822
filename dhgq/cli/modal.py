"""``dhgq modal ...``: the GPU offload on Modal."""

from __future__ import annotations

from typing import Annotated

import typer

from dhgq.cli.common import JsonOption, emit_json, settings_of, stderr, stdout

app = typer.Typer(no_args_is_help=True, help="GPU offload on Modal: deploy the app and check it works.")


@app.command()
def deploy(ctx: typer.Context) -> None:
    """Deploy modal_gpu/app.py under the configured app name, GPU and models, then prefetch the weights."""
    from dhgq import modal_deploy

    settings = settings_of(ctx)
    stderr.print(
        f"deploying {settings.modal_app_name} ({settings.modal_gpu}, whisper {settings.modal_whisper_model}, "
        f"diarizer {settings.modal_diarization_engine}) ..."
    )
    output = modal_deploy.deploy(settings)
    stdout.print(output, highlight=False, markup=False)


@app.command()
def check(
    ctx: typer.Context,
    json_output: JsonOption = False,
    timeout: Annotated[float, typer.Option(help="seconds each call may take, cold start included")] = 900.0,
) -> None:
    """Credentials, deployment, then both classes with the configured models on short audio (cold start
    and warm latency); exit 1 when any fails."""
    from dhgq import modal_deploy

    results = modal_deploy.check(settings_of(ctx), timeout=timeout)
    if json_output:
        emit_json([{"check": name, "ok": ok, "detail": detail} for name, ok, detail in results])
    else:
        for name, ok, detail in results:
            mark = "[green]ok[/green]  " if ok else "[red]FAIL[/red]"
            stdout.print(f"{mark} {name:<13} {detail}", highlight=False)
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(1)
