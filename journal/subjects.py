"""Every NATS name soul uses, in one place: streams, subjects and their tokens.

A soul named `app` owns
- its journal: stream `SOUL_<token>`, subjects `soul.<token>.e.<originator>` (events),
  `.s.` (snapshots) and `.t.` (tracking records);
- its inbox (souls messaging souls): stream `SOULINBOX_<token>`, subject `soulinbox.<token>`;
- its daemon's turns: request-reply on `soulrpc.<token>.turn`, outside every stream.

A token is the name itself when it is safe in a subject (letters, digits, `_`, `-`), else `x`
and its UTF-8 in hex, so any name maps to one token and back.
"""

from __future__ import annotations

import base64
import re
import uuid

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


def app_token(name: str) -> str:
    name = name or "soul"
    return name if _SAFE_TOKEN.fullmatch(name) else "x" + name.encode().hex()


def subject_token(value: uuid.UUID | str) -> str:
    """A subject token that decodes back to the same originator id (UUID or str)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    return "s_" + base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def originator_from_token(token: str) -> uuid.UUID | str:
    if token.startswith("s_"):
        padded = token[2:] + "=" * (-len(token[2:]) % 4)
        return base64.urlsafe_b64decode(padded).decode()
    return uuid.UUID(token)


def journal_stream(app: str) -> str:
    return f"SOUL_{app_token(app)}"


def journal_prefix(app: str) -> str:
    """What every subject of `app`'s journal starts with (`<prefix>.>` is the stream's filter)."""
    return f"soul.{app_token(app)}"


def inbox(app: str) -> tuple[str, str]:
    """The stream and subject of `app`'s inbox."""
    token = app_token(app)
    return f"SOULINBOX_{token}", f"soulinbox.{token}"


def turn_subject(app: str) -> str:
    """Where `app`'s daemon takes turns (request-reply)."""
    return f"soulrpc.{app_token(app)}.turn"
