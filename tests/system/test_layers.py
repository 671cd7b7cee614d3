"""The floors: journal/ (1) -> projections/ (2) -> evolution/ (3) -> soul/ (4). A module imports
only from its own floor or below; inside soul/, the agent is below its doors and the doors below
the command line. And every name any file imports from the project exists, so a move that left
an import behind fails here, not in the one place that runs it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.support import ROOT

FLOORS = {"journal": 1, "projections": 2, "evolution": 3, "soul": 4}
SOUL_ROOMS = {"soul.agent": 1, "soul.doors": 2, "soul.cli": 3}  # inside floor 4
FACES = 3  # soul/'s own modules (the package's face, `python -m soul`) stand with the command line
PACKAGES = tuple(FLOORS)
CHECKED_TOO = ("tests",)  # not a floor, but its imports must resolve as well


def modules(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import of a project module in `path`, relative ones resolved."""
    found = []
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((node.lineno, module, tuple(alias.name for alias in node.names)))
    return [(line, m, names) for line, m, names in found if m.split(".")[0] in (*PACKAGES, *CHECKED_TOO)]


def room(module: str) -> tuple[int, int]:
    """(floor, room within the floor) of a module."""
    top = module.split(".")[0]
    if top != "soul":
        return FLOORS[top], 0
    inner = next((rank for prefix, rank in SOUL_ROOMS.items() if module == prefix or module.startswith(prefix + ".")), FACES)
    return FLOORS[top], inner


def upward(path: Path, root: Path = ROOT) -> list[str]:
    mine = room(module_name(path, root))
    return [f"{path.relative_to(root)}:{line} imports {target} (floor {room(target)}) from floor {mine}"
            for line, target, _ in imports(path, root) if target.split(".")[0] in PACKAGES and room(target) > mine]


def test_no_module_imports_from_a_floor_above_its_own() -> None:
    found = [line for path in modules(*PACKAGES) for line in upward(path)]
    assert not found, "upward imports:\n" + "\n".join(found)


def test_the_check_names_an_upward_import(tmp_path: Path) -> None:
    (tmp_path / "journal").mkdir()
    scratch = tmp_path / "journal" / "scratch.py"
    scratch.write_text("from journal.event import BifocalEvent\nfrom soul.agent.loop import Soul\nfrom . import codec\n")
    assert upward(scratch, tmp_path) == ["journal/scratch.py:2 imports soul.agent.loop (floor (4, 1)) from floor (1, 0)"]
    (tmp_path / "evolution").mkdir()
    (tmp_path / "evolution" / "train.py").write_text("from soul import Soul\n")
    assert upward(tmp_path / "evolution" / "train.py", tmp_path) == [
        "evolution/train.py:1 imports soul (floor (4, 3)) from floor (3, 0)"]
    (tmp_path / "soul" / "agent").mkdir(parents=True)
    tool = tmp_path / "soul" / "agent" / "tools.py"
    tool.write_text("from soul.doors.daemon import attach\nfrom evolution.weights.model import load\n")
    assert upward(tool, tmp_path) == ["soul/agent/tools.py:1 imports soul.doors.daemon (floor (4, 2)) from floor (4, 1)"]


def test_the_agent_does_not_reach_its_doors_or_the_command_line() -> None:
    found = [line for path in modules("soul/agent") for line in upward(path)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", modules(*PACKAGES, "tests", "ops"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_imported_project_name_exists(path: Path) -> None:
    for line, module, names in imports(path):
        loaded = importlib.import_module(module)
        for name in names:
            if name == "*":
                continue
            assert hasattr(loaded, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
                f"{path.relative_to(ROOT)}:{line}: {module} has no {name}")


USERS_DATABASES = ROOT / "soul" / "agent" / "databases.py"  # the `sql` tool reads the user's databases, not the soul's


def test_postgres_is_reached_only_through_projections() -> None:
    found = []
    for path in modules("journal", "evolution", "soul"):
        if path == USERS_DATABASES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n.split(".")[0] in ("psycopg", "pgvector")]
    assert not found, "\n".join(found)


def test_the_journal_is_reached_through_its_face() -> None:
    # `Journal.factory` is eventsourcing's plumbing: the app name, the bus and the stream have
    # their own properties on the Journal.
    found = [f"{p.relative_to(ROOT)}:{n}" for p in modules(*PACKAGES[1:], "ops")
             for n, line in enumerate(p.read_text().splitlines(), 1) if ".factory." in line]
    assert not found, "\n".join(found)
