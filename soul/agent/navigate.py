"""Navigating a corpus's folder (issue 15): the read-only tools `files`, `read` and `grep`.

They read the files where the corpus was last added from (`corpus_added`, projections/corpora.py),
as they are now, not the chunks in memory: a task walks a repository as a person would. Which
files: those ingestion would read (soul.agent.corpus.list_files: git-tracked ones in a work
tree). A path must stay inside the folder; what a tool prints is capped, and says how to go on.
"""

from __future__ import annotations

import re
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from projections import corpora
from soul.agent.corpus import list_files, read_text
from soul.agent.tools import Tool, ToolError, ToolHost, register, required

MAX_FILES = 200  # paths `files` lists
MAX_LINES = 200  # lines `read` shows at once
MAX_CHARS = 12_000
MAX_MATCHES = 100  # lines `grep` shows
LINE_CHARS = 300  # of a matching line

CORPUS = {"type": "string", "description": "the corpus (default: the mounted one)"}


def root_of(soul: ToolHost, arguments: dict[str, Any]) -> tuple[str, Path]:
    """The corpus named in `arguments` (else the mounted one) and its folder."""
    name = arguments.get("corpus") or corpora.mounted(soul.conn, soul.app)
    if not name:
        raise ToolError("no corpus given and none mounted")
    folder = corpora.root(soul.conn, soul.app, str(name))
    if folder is None:
        known = [c["name"] for c in corpora.listing(soul.conn, soul.app)]
        if name not in known:
            raise ToolError(f"no corpus named {name!r}; known: {', '.join(known) or 'none'}")
        raise ToolError(f"corpus {name!r} has no folder journaled: add it again (soul corpus add {name} PATH)")
    root = Path(folder)
    if not root.is_dir():
        raise ToolError(f"corpus {name!r}'s folder {root} is gone")
    return str(name), root


def inside(root: Path, path: str) -> Path:
    """`path` under `root`, refused if it leads outside (`..`, an absolute path, a symlink out)."""
    target = (root / path).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ToolError(f"{path!r} is outside the corpus's folder")
    return target


def _number(arguments: dict[str, Any], name: str) -> int | None:
    value = arguments.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ToolError(f"{name} is a line number, not {value!r}") from None
    if number < 1:
        raise ToolError(f"{name} is a line number from 1")
    return number


def files(soul: ToolHost, arguments: dict[str, Any]) -> str:
    name, root = root_of(soul, arguments)
    prefix, pattern = str(arguments.get("path") or "").strip("/"), arguments.get("pattern")
    found = [p for p in list_files(root) if (not prefix or p == prefix or p.startswith(prefix + "/"))
             and (not pattern or fnmatch(p, str(pattern)) or fnmatch(p.rsplit("/", 1)[-1], str(pattern)))]
    if not found:
        return f"no file in corpus {name}{' under ' + prefix if prefix else ''}{' matching ' + pattern if pattern else ''}"
    more = len(found) - MAX_FILES
    return "\n".join(found[:MAX_FILES] + ([f"… {more} more: narrow with path or pattern"] if more > 0 else []))


def read(soul: ToolHost, arguments: dict[str, Any]) -> str:
    _, root = root_of(soul, arguments)
    path = required(arguments, "path")
    text, why = read_text(inside(root, path))
    if text is None:
        raise ToolError(f"cannot read {path}: {'no such file' if why == 'not a regular file' else why}")
    lines = text.splitlines()
    first = _number(arguments, "first") or 1
    last = min(_number(arguments, "last") or first + MAX_LINES - 1, len(lines), first + MAX_LINES - 1)
    if first > len(lines):
        raise ToolError(f"{path} has {len(lines)} lines")
    shown, size = [], 0
    for number in range(first, last + 1):
        line = f"{number}: {lines[number - 1]}"
        if size + len(line) > MAX_CHARS and shown:
            last = number - 1
            break
        shown.append(line)
        size += len(line) + 1
    header = f"{path} lines {first}-{last} of {len(lines)}"
    tail = [f"… read on with first={last + 1}"] if last < len(lines) else []
    return "\n".join([header, *shown, *tail])


def grep(soul: ToolHost, arguments: dict[str, Any]) -> str:
    name, root = root_of(soul, arguments)
    pattern = required(arguments, "pattern")
    try:
        wanted = re.compile(pattern, re.IGNORECASE)
    except re.error:  # a literal, then
        wanted = re.compile(re.escape(pattern), re.IGNORECASE)
    prefix = str(arguments.get("path") or "").strip("/")
    matches, more = [], 0
    for path in list_files(root):
        if prefix and not (path == prefix or path.startswith(prefix + "/")):
            continue
        text, _ = read_text(root / path)
        for number, line in enumerate((text or "").splitlines(), 1):
            if wanted.search(line):
                if len(matches) < MAX_MATCHES:
                    matches.append(f"{path}:{number}: {line.strip()[:LINE_CHARS]}")
                else:
                    more += 1
    if not matches:
        return f"no line of corpus {name} matches {pattern!r}"
    return "\n".join(matches + ([f"… {more} more matches: narrow with path"] if more else []))


def _parameters(properties: dict[str, Any], required_names: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": {**properties, "corpus": CORPUS}, "required": required_names}


for _tool in (
    Tool("files", "List the files of a corpus's folder (a repository), optionally under a path or matching a glob.",
         _parameters({"path": {"type": "string", "description": "a folder inside the corpus"},
                      "pattern": {"type": "string", "description": "a glob such as *.py"}}, []), files, read_only=True),
    Tool("read", "Read a file of a corpus's folder, with line numbers; first and last choose the lines.",
         _parameters({"path": {"type": "string", "description": "the file, relative to the corpus's folder"},
                      "first": {"type": "integer", "description": "the first line (from 1)"},
                      "last": {"type": "integer", "description": "the last line"}}, ["path"]), read, read_only=True),
    Tool("grep", "Search the files of a corpus's folder for a regular expression (case-insensitive): path:line: text.",
         _parameters({"pattern": {"type": "string", "description": "a regular expression, or plain words"},
                      "path": {"type": "string", "description": "only under this folder or file"}}, ["pattern"]),
         grep, read_only=True),
):
    register(_tool)
