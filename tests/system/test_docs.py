"""The README's commands exist, with the options it shows: documentation that is tested."""

from __future__ import annotations

import re
import shlex

import click
import pytest

from soul.cli import main
from tests.support import ROOT

README = ROOT / "README.md"


def readme_commands() -> list[list[str]]:
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in ("soul", "ops/soul"):
                commands.append(words[1:])
    return commands


@pytest.mark.parametrize("words", readme_commands(), ids=" ".join)
def test_readme_command_exists_with_its_options(words: list[str]) -> None:
    command: click.Command = main
    ctx = click.Context(main)
    options = {opt for p in main.params for opt in p.opts + p.secondary_opts}
    for word in words:
        if isinstance(command, click.Group) and word not in command.commands and not word.startswith("-"):
            word = getattr(command, "default_command", word)  # `soul task GOAL` is `soul task start GOAL`
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            options |= {opt for p in command.params for opt in p.opts + p.secondary_opts}
        elif word.startswith("-"):
            assert word.split("=")[0] in options, f"{word} is not an option of {' '.join(words)}"
    assert not isinstance(command, click.Group), f"{' '.join(words)} names a group, not a command"
    assert command.get_help(ctx)


def test_readme_shows_commands() -> None:
    assert len(readme_commands()) >= 8
