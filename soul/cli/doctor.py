"""`soul doctor`: what this soul runs on, and whether each part answers.

Every check reports instead of raising: a doctor that crashes on the first broken part would
hide the others.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import click
import orjson

from journal.embedded import EmbeddedNats, soul_home
from journal.errors import one_line
from journal.journal import Journal
from journal.secrets import redact_url
from projections.postgres import EmbeddedPostgres, server_versions
from soul.cli.options import app_of, default_embedder, json_option


@click.command()
@json_option("Print the report as one JSON object.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """What the soul runs on (device, BLAS, mlx, model and embedder with their hashes) and
    whether NATS and Postgres answer. Exit status 1 if any part does not."""
    figures = report(app_of(ctx))
    if as_json:
        click.echo(orjson.dumps(figures).decode())
    else:
        click.echo(f"{'home':<10} {figures['home']}")
        for part, found in figures.items():
            if part == "home":
                continue
            details = "  ".join(f"{k}={v}" for k, v in found.items() if k not in ("ok", "error"))
            click.echo(f"{part:<10} {'ok  ' if found['ok'] else 'FAIL'}  {found.get('error') or details}")
    if not all(found["ok"] for part, found in figures.items() if part != "home"):
        ctx.exit(1)


def _check(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return {"ok": True, **probe()}
    except Exception as e:  # any failure is the finding
        return {"ok": False, "error": one_line(e)}


def _compute() -> dict[str, Any]:
    import mlx.core as mx

    from evolution.weights.blas import blas_in_use, matmul_gflops

    blas = blas_in_use()
    return {"device": str(mx.default_device()), "mlx": version("mlx"), "mlx_lm": version("mlx-lm"),
            "blas": blas.name, "blas_library": blas.library, "matmul_gflops": round(matmul_gflops(), 1),
            "platform": platform.platform()}


def _model() -> dict[str, Any]:
    from evolution.weights.model import MODEL_ID, embedded_model_dir

    if path := os.environ.get("SOUL_MODEL"):
        return {"model": path, "source": "SOUL_MODEL"}
    return {"model": MODEL_ID, "path": str(embedded_model_dir()), "source": "embedded"}


def _embedder() -> dict[str, Any]:
    embedder = default_embedder()
    return {"embedder": embedder.name, "dim": embedder.dim}


def _nats(app: str) -> dict[str, Any]:
    external = os.environ.get("SOUL_NATS_URL")
    if not external and not EmbeddedNats(soul_home()).status()["running"]:
        return {"url": None, "state": "embedded server stopped (commands start it on demand)"}
    with Journal(app) as journal:
        connection = journal.bus
        v = connection.nc.connected_server_version
        return {"url": connection.where, "server": f"{v.major}.{v.minor}.{v.patch}",
                "stream": journal.stream, "last_seq": journal.last_seq()}


def _postgres() -> dict[str, Any]:
    url = os.environ.get("SOUL_PG_URL") or EmbeddedPostgres(soul_home()).status()["url"]
    if not url:
        return {"url": None, "state": "embedded server stopped (commands start it on demand)"}
    return {"url": redact_url(url), **server_versions(url)}


def report(app: str) -> dict[str, Any]:
    """Each part's findings; the heavy ones (MLX, the models) are imported only when probed."""
    return {
        "home": str(soul_home()),
        "compute": _check(_compute),
        "model": _check(_model),
        "embedder": _check(_embedder),
        "nats": _check(lambda: _nats(app)),
        "postgres": _check(_postgres),
    }
