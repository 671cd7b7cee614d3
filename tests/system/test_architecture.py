"""docs/architecture.md and the README's Layout name real code: every file path they show exists
and every dotted name resolves, so a move or a rename that leaves the docs behind fails here."""

from __future__ import annotations

import importlib
import inspect
import re

import click
import pytest

from tests.support import ROOT

ARCHITECTURE = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"
PACKAGES = ("journal", "projections", "evolution", "soul")
DOTTED = re.compile(rf"\b(?:{'|'.join(PACKAGES)})(?:\.\w+)+")
PATH = re.compile(r"[\w.-]+(?:/[\w.-]+)*(?:\.py|/)")
# One event's life, step by step: the doc must keep naming each (by its last parts, so a module
# moving only needs the doc to follow it).
STEPS = ("say", "open_soul", "Soul.turn", "Soul.perceive", "redact_secrets", "Embedder.embed", "Journal.add",
         "insert_events", "ProjectionRunner.catch_up", "Memory.apply", "Turns.apply", "search", "assemble",
         "Mind.generate", "self_judgement", "similarity_judgement", "combine", "curate", "training_rows",
         "train_adapter", "merge_model", "ties_merge", "GenerationStore.keep", "GenerationStore.promote",
         "evolve", "replay")


def layout() -> str:
    """The README's Layout section."""
    text = README.read_text()
    start = text.index("\n## Layout\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end != -1 else len(text)]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def names(text: str, fenced_too: bool = False) -> tuple[set[str], set[str]]:
    """(paths, dotted names) the text shows in backticks, and with `fenced_too` anywhere in its
    fenced blocks (the Layout's tree)."""
    spans = backticked(text)
    if fenced_too:
        spans += [word.strip(",;:().") for block in re.findall(r"```\n(.*?)```", text, re.S) for word in block.split()]
    paths = {s for s in spans if PATH.fullmatch(s)}
    dotted = {s for s in spans if DOTTED.fullmatch(s)}
    return paths, dotted


def defined_in(value: object) -> str | None:
    """The module a function, class or click command was written in; None for other values."""
    if isinstance(value, click.Command) and value.callback is not None:
        value = value.callback
    return value.__module__ if inspect.isfunction(value) or inspect.isclass(value) else None


def resolves(name: str) -> bool:
    """Import the longest importable module prefix of `name`, then getattr the rest. A function
    or class must be defined in that module, not imported into it: the doc says where code lives."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name) and e.name.split(".")[0] in PACKAGES:
                continue  # not a module: an attribute of a shorter prefix
            raise
        for depth, attribute in enumerate(parts[cut:]):
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
            if depth == 0 and defined_in(found) not in (None, module_name):
                return False
        return True
    return False


DOCS = {"docs/architecture.md": lambda: names(ARCHITECTURE.read_text()),
        "README.md Layout": lambda: names(layout(), fenced_too=True)}


@pytest.mark.parametrize("doc", DOCS)
def test_paths_exist(doc: str) -> None:
    paths, _ = DOCS[doc]()
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc} names files or folders that do not exist: {', '.join(missing)}"


@pytest.mark.parametrize("doc", DOCS)
def test_dotted_names_resolve(doc: str) -> None:
    _, dotted = DOCS[doc]()
    assert dotted, f"{doc} names no code"
    unresolved = sorted(n for n in dotted if not resolves(n))
    assert not unresolved, f"{doc} names code that does not exist where it says: {', '.join(unresolved)}"


def test_architecture_walks_every_step() -> None:
    _, dotted = names(ARCHITECTURE.read_text())
    missing = [step for step in STEPS if not any(n == step or n.endswith("." + step) for n in dotted)]
    assert not missing, f"docs/architecture.md no longer names these steps of an event's life: {', '.join(missing)}"


def test_layout_shows_every_room() -> None:
    paths, _ = names(layout(), fenced_too=True)
    rooms = {f"{p.relative_to(ROOT)}/" for top in (*PACKAGES, "ops") for p in [ROOT / top, *(ROOT / top).rglob("*")]
             if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py"))} - {"soul/"}
    missing = sorted(rooms - paths)
    assert not missing, f"the README's Layout does not show these rooms: {', '.join(missing)}"
