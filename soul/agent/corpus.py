"""Ingesting a corpus: the text files under a path, chunked with overlap, each chunk a bifocal
event on the journal (design §4).

Which files: in a git work tree the files git tracks under PATH (`git ls-files`), else every
file under PATH (not following symlinks, skipping `.git`). Skipped, and counted by reason:
binary files (a NUL byte, or not UTF-8), files over MAX_FILE_BYTES, empty and unreadable ones.
A PATH that yields no text file at all is refused before anything is journaled, saying why
(`no_files`: not a folder, empty, untracked or ignored by git; `Ingest.run`: every file skipped).

Chunks: up to CHUNK_LINES lines and CHUNK_CHARS characters, consecutive chunks sharing
OVERLAP_LINES lines so that what straddles a boundary is whole in one of them; a line longer
than CHUNK_CHARS is cut into pieces. 1,200 characters are ~300-400 tokens of code: the embedder
reads the first 256 (the vector covers most of a chunk), keyword search reads all of it, and
an event stays ~3 KB, far under NATS's 1 MB payload limit.

Incremental: the corpora projection knows each file's sha256 and chunk event ids. A file whose
hash is unchanged (and whose chunks were all journaled) journals nothing; a changed one journals a
`document_removed` naming its old chunks, then its new chunks; a file no longer listed journals a
`document_removed` (its tombstone). Memory forgets the chunks a tombstone names.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from journal.secrets import redact_secrets
from projections.corpora import FileState

CHUNK_LINES = 40
CHUNK_CHARS = 1200
OVERLAP_LINES = 6
MAX_FILE_BYTES = 1 << 20  # larger files are data or generated, not reading matter
EMBED_BATCH = 256  # chunks embedded (and journaled) together, once past the first few batches
FIRST_BATCH = 16  # the first batch is small and each next one twice as large: search sees the first files in seconds
APPEND_BATCH = 1000  # the journal's atomic batch limit

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CorpusError(ValueError):
    """A user mistake (bad name, missing path, unknown corpus); the message says which."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise CorpusError(f"corpus name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
    return name


def originator(name: str) -> str:
    """All events of one corpus belong to one aggregate, so they are ordered and versioned together."""
    return f"corpus:{name}"


@dataclass(frozen=True)
class Chunk:
    text: str
    first_line: int  # 1-based, inclusive
    last_line: int


def chunk_text(text: str) -> list[Chunk]:
    pieces: list[tuple[int, str]] = []  # (line number, at most CHUNK_CHARS of that line)
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        pieces.extend((number, line[k : k + CHUNK_CHARS]) for k in range(0, len(line), CHUNK_CHARS))
    chunks: list[Chunk] = []
    start = 0
    while start < len(pieces):
        end, size = start, 0
        while end < len(pieces) and end - start < CHUNK_LINES and (end == start or size + len(pieces[end][1]) <= CHUNK_CHARS):
            size += len(pieces[end][1])
            end += 1
        chunks.append(Chunk("".join(p for _, p in pieces[start:end]), pieces[start][0], pieces[end - 1][0]))
        if end == len(pieces):
            break
        start = max(start + 1, end - OVERLAP_LINES)
    return chunks


def _git(root: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(root), *args, "-z"], capture_output=True, check=True).stdout
    return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]


def _inside_git(root: Path) -> bool:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                          capture_output=True, text=True).stdout.strip() == "true"


def list_files(root: Path) -> list[str]:
    """Paths under `root`, relative to it, with `/` separators, sorted."""
    if _inside_git(root):
        return sorted(_git(root, "ls-files"))
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        found.extend(Path(folder, n).relative_to(root).as_posix() for n in names)
    return sorted(found)


def no_files(root: Path) -> str:
    """Why `root` yields no files to ingest (list_files found none, or it is no folder), in one line."""
    if not root.exists():
        return f"{root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a directory"
    if _inside_git(root):
        untracked = len(_git(root, "ls-files", "--others", "--exclude-standard"))
        ignored = len(_git(root, "ls-files", "--others", "--ignored", "--exclude-standard"))
        if untracked or ignored:
            held = ", ".join(f"{n} {why}" for n, why in ((untracked, "untracked"), (ignored, "ignored by git")) if n)
            return (f"git tracks no file under {root} ({held}): in a git work tree only tracked files are "
                    "ingested; `git add` them, or ingest a copy outside the work tree")
    return f"{root} holds no files"


def read_text(path: Path) -> tuple[str | None, str]:
    """(the file's text, its sha256), or (None, why it is skipped)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None, "not a regular file"
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, "too large"
        content = path.read_bytes()
    except OSError:
        return None, "unreadable"
    if not content.strip():
        return None, "empty"
    if b"\0" in content:
        return None, "binary"
    try:
        return content.decode("utf-8"), hashlib.sha256(content).hexdigest()
    except UnicodeDecodeError:
        return None, "binary"


@dataclass
class Report:
    files: int = 0  # listed under PATH
    ingested: int = 0  # new or changed, journaled
    unchanged: int = 0
    removed: int = 0  # tombstones journaled
    chunks: int = 0
    events: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> files
    embed_seconds: float = 0.0
    journal_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "embed_seconds": round(self.embed_seconds, 3),
                "journal_seconds": round(self.journal_seconds, 3)}


class Ingest:
    """One run of `soul corpus add NAME PATH` against what the corpora view knows of NAME."""

    def __init__(self, journal: Journal, embedder: Any, name: str, known: dict[str, FileState],
                 known_root: str | None = None):
        self.journal, self.embedder, self.name, self.known = journal, embedder, check_name(name), known
        self.known_root = known_root  # the folder the view holds for the corpus
        self.origin = originator(name)
        self.report = Report()
        self._chunks: list[tuple[Chunk, dict[str, Any]]] = []  # awaiting embedding, in order
        self._events: list[BifocalEvent] = []  # awaiting the journal, in order
        self._batch = FIRST_BATCH

    def run(self, root: Path, paths: list[str], complete: bool = True,
            progress: Callable[[int], None] | None = None) -> Report:
        """Ingest `paths` (from list_files(root)); `complete`: they are all of root's files, so
        known files not among them are gone and get tombstones."""
        self.report.files = len(paths)
        for path in paths:
            self._file(root, path)
            if progress:
                progress(1)
        if paths and not (self.report.ingested or self.report.unchanged):  # nothing journaled yet: see _file
            skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.report.skipped.items()))
            raise CorpusError(f"no text file under {root}: of {len(paths)} files, {skipped}")
        where = str(root.resolve())
        if where != self.known_root:  # where the navigation tools read its files
            self._events.append(BifocalEvent("corpus_added", f"corpus {self.name} reads {where}", [], NO_EMBEDDER,
                                             corpus=self.name, data={"root": where}))
        if complete:
            for path in sorted(set(self.known) - set(paths)):
                self._tombstone(path)
        self._flush(embed_all=True)
        return self.report

    def _file(self, root: Path, path: str) -> None:
        text, sha = read_text(root / path)
        if text is None:  # no `_flush` here: a folder with no text file journals nothing (see run)
            self.report.skipped[sha] = self.report.skipped.get(sha, 0) + 1
            if path in self.known:  # it was text once; now it is not: gone from the view
                self._tombstone(path)
            return
        old = self.known.get(path)
        if old is not None and old.sha256 == sha and old.complete:
            self.report.unchanged += 1
            return
        if old is not None:
            self._tombstone(path, counted=False)
        chunks = chunk_text(text)
        for index, chunk in enumerate(chunks):
            self._chunks.append((chunk, {"path": path, "sha256": sha, "chunk": index, "chunks": len(chunks),
                                         "lines": [chunk.first_line, chunk.last_line]}))
        self.report.ingested += 1
        self.report.chunks += len(chunks)
        self._flush()

    def _tombstone(self, path: str, counted: bool = True) -> None:
        old = self.known[path]
        self._embed()  # the tombstone follows the chunks queued before it
        self._events.append(BifocalEvent(
            "document_removed", f"{path} left corpus {self.name}", [], NO_EMBEDDER, corpus=self.name,
            data={"path": path, "sha256": old.sha256, "chunk_ids": [str(i) for i in old.chunk_ids]}))
        self.report.removed += counted

    def _flush(self, embed_all: bool = False) -> None:
        if len(self._chunks) >= self._batch or embed_all:
            self._embed()
            self._append()
            self._batch = min(2 * self._batch, EMBED_BATCH)

    def _embed(self) -> None:
        if not self._chunks:
            return
        started = time.perf_counter()
        texts = []
        for chunk, data in self._chunks:  # before embedding, so the vector holds no secret either
            text, kinds = redact_secrets(chunk.text)
            if kinds:
                data["redacted"] = kinds
            texts.append(text)
        vectors = self.embedder.embed(texts)
        self.report.embed_seconds += time.perf_counter() - started
        self._events.extend(
            BifocalEvent("chunk_ingested", text, vector, self.embedder.id, corpus=self.name, data=data)
            for text, (_, data), vector in zip(texts, self._chunks, vectors))
        self._chunks.clear()

    def _append(self) -> None:
        started = time.perf_counter()
        for batch in _batches(self._events, APPEND_BATCH):
            first = self.journal.next_version(self.origin)
            self.journal.append([_as(e, self.origin, first + k) for k, e in enumerate(batch)])
            self.report.events += len(batch)
        self._events.clear()
        self.report.journal_seconds += time.perf_counter() - started


def _as(event: BifocalEvent, origin: str, version: int) -> BifocalEvent:
    return replace(event, originator_id=origin, originator_version=version)


def _batches(events: list[BifocalEvent], size: int) -> Iterator[list[BifocalEvent]]:
    for k in range(0, len(events), size):
        yield events[k : k + size]
