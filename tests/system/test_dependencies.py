"""pyproject.toml declares what the code imports: every third-party module the packages import
comes from a declared dependency, the tests' from a dependency or the test extra, and what only
the tests use is not installed for every user."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.support import ROOT

PACKAGES = ("journal", "projections", "evolution", "soul")
# Needed at run time without being imported by the packages: nats-py signs with nkeys for
# SOUL_NATS_NKEY_SEED and SOUL_NATS_CREDS.
RUNTIME_ONLY = {"nkeys"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], set[str]]:
    """(the dependencies, the test extra), by canonical distribution name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {canonical(re.match(r"[A-Za-z0-9._-]+", r).group()) for r in requirements}  # type: ignore[union-attr]

    return names(project["dependencies"]), names(project["optional-dependencies"]["test"])


def imported(*tops: str) -> dict[str, set[str]]:
    """Each third-party top-level module imported under `tops` -> the files importing it."""
    local = {*PACKAGES, "tests", "ops", *(p.stem for p in (ROOT / "ops").rglob("*.py"))}  # ops/bench modules tests load
    found: dict[str, set[str]] = {}
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            if "data" in path.relative_to(ROOT).parts:  # test data shaped like code, never run
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top_level = module.partition(".")[0]
                    if top_level not in sys.stdlib_module_names and top_level not in local:
                        found.setdefault(top_level, set()).add(str(path.relative_to(ROOT)))
    return found


def distributions(module: str) -> set[str]:
    return {canonical(d) for d in packages_distributions().get(module, [])}


def test_what_the_packages_import_is_a_dependency() -> None:
    dependencies, _ = declared()
    undeclared = {module: sorted(files) for module, files in imported(*PACKAGES).items()
                  if not distributions(module) & dependencies}
    assert undeclared == {}


def test_what_the_tests_import_is_declared_and_what_only_they_use_is_in_the_test_extra() -> None:
    dependencies, test = declared()
    undeclared = {module: sorted(files) for module, files in imported("tests").items()
                  if not distributions(module) & (dependencies | test)}
    assert undeclared == {}
    by_the_packages = {d for module in imported(*PACKAGES) for d in distributions(module)}
    tests_only = {d for module in imported("tests") for d in distributions(module)} - by_the_packages
    assert (tests_only & dependencies) - RUNTIME_ONLY == set()
