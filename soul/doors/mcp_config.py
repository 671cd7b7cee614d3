"""`$SOUL_HOME/mcp.json`: the MCP servers the soul calls, and what its own server serves.

Servers are read in the shapes other MCP clients write, so a file from one of them can be
copied in: Claude Code's and Claude Desktop's `mcpServers`, VS Code's `servers` (both may be
there; a name in both is an error). Each entry is

- stdio: `{"type": "stdio", "command": "...", "args": [...], "env": {...}, "cwd": "..."}`; the
  type may be left out when there is a command. A relative `cwd` is taken from the folder
  that holds mcp.json.
- http (streamable HTTP): `{"type": "http", "url": "https://...", "headers": {...}}`; the type
  may be left out when there is a url.

and either may say `"disabled": true` (listed as disabled, never started) and `"timeout"` in
seconds (the soul's own field). VS Code's `inputs` are allowed but not asked for: the soul
never prompts. `"serve": {"allow": [...]}` is the soul's own server's allow-list
(soul/doors/mcp_server.py). Anything else, or a field that does not fit its server's type,
is one ConfigError naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from journal.embedded import soul_home

CONFIG = "mcp.json"
DEFAULT_TIMEOUT = 30.0
SECTIONS = ("mcpServers", "servers")  # Claude Code and Claude Desktop; VS Code
KEYS = (*SECTIONS, "inputs", "serve")
COMMON = ("type", "disabled", "timeout")
FIELDS = {"stdio": (*COMMON, "command", "args", "env", "cwd"), "http": (*COMMON, "url", "headers")}


class ConfigError(ValueError):
    """mcp.json is missing something or malformed; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Server:
    name: str
    transport: str  # "stdio" | "http"
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # may hold a token: never printed
    timeout: float = DEFAULT_TIMEOUT
    disabled: bool = False

    def describe(self) -> str:
        """What is started or reached: the command line, or the url."""
        return " ".join((self.command, *self.args)) if self.transport == "stdio" else self.url


def config_path(home: Path | None = None) -> Path:
    return (home or soul_home()) / CONFIG


def load_config(home: Path | None = None) -> dict[str, Any]:
    """The parsed mcp.json ({} when there is none)."""
    path = config_path(home)
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    unknown = sorted(set(config) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; mcp.json holds {', '.join(KEYS)}")
    return config


def servers(home: Path | None = None) -> dict[str, Server]:
    """Every configured server, disabled ones included, by name."""
    path, config = config_path(home), load_config(home)
    found: dict[str, Server] = {}
    for section in SECTIONS:
        entries = config.get(section, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}: {section} must map server names to their settings")
        for name, entry in entries.items():
            if name in found:
                raise ConfigError(f"{path}: server {name!r} is in both mcpServers and servers; keep one")
            found[name] = parse(name, entry, f"{path}: {section}.{name}", path.parent)
    return found


def parse(name: str, entry: Any, where: str, folder: Path) -> Server:
    """One server entry; `where` names the file and key in errors, `folder` anchors a relative cwd."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be an object")
    transport = entry.get("type", "http" if "url" in entry and "command" not in entry else "stdio")
    if transport not in FIELDS:
        raise ConfigError(f"{where}: type {transport!r} is not one the soul speaks; use \"stdio\" or \"http\" "
                          "(streamable HTTP)")
    unknown = sorted(set(entry) - set(FIELDS[transport]))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} for a {transport} server; "
                          f"it takes {', '.join(FIELDS[transport])}")
    timeout, disabled = entry.get("timeout", DEFAULT_TIMEOUT), entry.get("disabled", False)
    need(isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0,
         f"{where}: timeout must be a positive number of seconds")
    need(isinstance(disabled, bool), f"{where}: disabled must be true or false")
    if transport == "http":
        url, headers = entry.get("url"), entry.get("headers", {})
        need(isinstance(url, str) and url.startswith(("http://", "https://")),
             f"{where}: an http server needs a url (http:// or https://)")
        need(texts(headers), f"{where}: headers must map header names to text")
        return Server(name, "http", url=url, headers=dict(headers), timeout=float(timeout), disabled=disabled)
    command, args, env, cwd = entry.get("command"), entry.get("args", []), entry.get("env", {}), entry.get("cwd")
    need(isinstance(command, str) and bool(command), f"{where}: a stdio server needs a command (text)")
    need(isinstance(args, list) and all(isinstance(a, str) for a in args), f"{where}: args must be a list of text")
    need(texts(env), f"{where}: env must map variable names to text")
    need(cwd is None or (isinstance(cwd, str) and bool(cwd)), f"{where}: cwd must be a folder (text)")
    return Server(name, "stdio", command=command, args=tuple(args), env=dict(env),
                  cwd=folder / Path(cwd).expanduser() if cwd else None, timeout=float(timeout), disabled=disabled)


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def texts(mapping: Any) -> bool:
    return isinstance(mapping, dict) and all(isinstance(v, str) for v in mapping.values())
