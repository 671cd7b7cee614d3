"""What the commands share: the options several of them take, and how a command finds its soul,
opens its journal, loads the embedder, or opens the soul itself.

`open_soul` is the one place that decides where the soul runs: in the running `soul daemon`
when there is one (attached over NATS, soul/doors/daemon.py), else in this process (the model is
loaded here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from journal.embedded import soul_home
from journal.journal import Journal
from soul.agent.judges import RatingError
from soul.agent.loop import DEFAULT_CONVERSATION, Soul, TurnError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _model_option(kind: click.Path, help: str) -> Decorator:
    return click.option("--model", type=kind, envvar="SOUL_MODEL", metavar="DIR", help=help)


model_option = _model_option(
    click.Path(path_type=Path),
    "An MLX model directory to think with (SOUL_MODEL). Default: the promoted generation, else the embedded SmolLM2-135M-Instruct.")
# W0 for evolve and replay: a folder (a file is refused), handed on as the string given
base_model_option = _model_option(
    click.Path(file_okay=False),
    "Base model W0 (an MLX model folder). Default: the embedded SmolLM2-135M-Instruct. Env: SOUL_MODEL.")
as_option = click.option(
    "--as", "as_generation", metavar="gen-N",
    help="Talk to a past self: generation N's weights, remembering only the journal up to its cut.")
conversation_option = click.option(
    "-c", "--conversation", default=DEFAULT_CONVERSATION, show_default=True, metavar="ID",
    help="Which conversation to continue (any name; each keeps its own window).")
no_memory_option = click.option(
    "--no-memory", is_flag=True,
    help="The weights alone: the window holds only the self-definition and the words to answer (no retrievals, "
         "earlier turns, summary or notebook; no tools). Its thought's data says window: no-memory.")


def json_option(help: str) -> Decorator:
    """--json: machine-readable output instead of lines for people; `help` says its shape."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def not_empty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An argument's callback refusing blank words in one line, before anything is opened or journaled."""
    if not value.strip():
        raise click.ClickException(f"{param.human_readable_name} is empty: there is nothing to {ctx.info_name}")
    return value


def app_of(ctx: click.Context) -> str:
    """The soul's name: `soul --app`, or SOUL_APP for a command invoked outside the `soul` group."""
    return ctx.obj["app"] if ctx.obj else os.environ.get("SOUL_APP", "soul")


def open_journal(ctx: click.Context) -> Journal:
    """The soul's journal, open until the command ends."""
    journal = Journal(app=app_of(ctx))
    ctx.call_on_close(journal.close)
    return journal


def default_embedder() -> Any:
    from soul.agent.embedder import load_default_embedder  # loads MLX: only for commands that embed

    return load_default_embedder()


def mind_errors() -> tuple[type[Exception], ...]:
    """The mistakes a user can fix around the mind: a bad model or embedder, a window too small,
    a bad rating. Imported here, not at the top: they load MLX, which other commands do not need."""
    from evolution.lineage import LineageError
    from evolution.store import StoreError
    from evolution.weights.model import ModelError
    from soul.agent.embedder import EmbedderError

    return ModelError, EmbedderError, TurnError, RatingError, LineageError, StoreError


@contextmanager
def open_soul(ctx: click.Context, model: Path | None, as_generation: str | None = None,
              here: bool = False, think: bool = True) -> Iterator[Soul]:
    """The soul to talk to: the running `soul daemon`'s if one serves this soul (its model
    answers; soul/doors/daemon.py), else one opened in this process. `as_generation` ("gen-N"),
    and any soul when `here`, is opened here: that past self's weights, remembering the journal
    up to its cut. Unless it will `think`, the mind's weights are not read (a tool call, the
    window). Model, embedder, lineage, window, rating and daemon mistakes end in one line."""
    from soul.doors.daemon import DaemonError, attach

    app, errors = app_of(ctx), (*mind_errors(), DaemonError)
    try:
        if as_generation is not None:
            from evolution.lineage import parse_name, resolve

            with Journal(app) as journal:
                folder, cut = resolve(journal, soul_home(), as_generation)
            opened = Soul.open(app, model_dir=folder, generation=f"gen-{parse_name(as_generation)}", as_of=cut,
                               weights=think)
        else:
            opened = (None if here else attach(app)) or Soul.open(app, model_dir=model, weights=think)
        with opened as soul:
            yield soul
    except errors as e:
        raise click.ClickException(str(e)) from None
