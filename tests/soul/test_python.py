"""The Python face (soul/__init__.py): `import soul` stays light, the README's example runs as
written (with the tiny model), and each method journals what its command would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import soul
from evolution.lineage import chain, lineage
from journal.journal import Journal
from tests.evolution_support import CONFIG, journal_moments
from tests.support import ROOT
from tests.tiny_model import build_tiny_model

README = ROOT / "README.md"
HEAVY = ("mlx", "mlx_lm", "numpy", "psycopg", "soul.agent.loop")


def readme_example() -> str:
    """The code block of the README's Python section."""
    text = README.read_text()
    start = text.index("\n## Python\n")
    (code,) = re.findall(r"```python\n(.*?)```", text[start: text.index("\n## ", start + 1)], re.S)
    return code


def test_import_soul_loads_nothing_heavy() -> None:
    shown = subprocess.run([sys.executable, "-c", f"import sys, soul; print([m for m in {HEAVY} if m in sys.modules])"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shown.stdout.strip() == "[]", shown.stderr


def test_the_readme_example_runs(journal: Journal, nats_url: str, pg_url: str, soul_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SOUL_HOME": str(soul_home), "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": pg_url,
           "SOUL_APP": journal.app, "SOUL_MODEL": str(build_tiny_model(tmp_path / "w0"))}
    ran = subprocess.run([sys.executable, "-c", readme_example()], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert ran.returncode == 0, ran.stderr
    entries = list(journal.read())
    said = next(e for e in entries if e.topic == "perception" and e.event.prose == "My sister is called Oona.")
    thought = next(e for e in entries if e.topic == "thought" and e.event.causation_id == said.event.id)
    rating = next(e for e in entries if e.topic == "resonance" and e.event.data["judge"] == "user")
    assert (rating.event.data["event"], rating.event.data["score"]) == (str(thought.event.id), 0.95)
    ci = next(e for e in entries if e.topic == "perception" and e.event.data == {"source": "ci"})
    assert ci.event.originator_id == "source:ci"  # as `soul perceive --source ci` journals it
    lines = ran.stdout.splitlines()
    assert lines[0] == thought.event.prose  # the reply, streamed piece by piece
    assert f"{ci.seq} perception the tests pass on a clean clone" in lines  # recalled
    assert lines[-1] == "nothing to curate 1 moments reach resonance 0.9; min_events is 8"
    assert entries[-1].topic == "curation_sealed" and entries[-1].event.data["outcome"] == "nothing to curate"


def test_each_method_is_its_commands_code(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "w0")
    journal_moments(journal, 3)
    with soul.open(app=journal.app, model=model) as me:
        assert me.app == journal.app and me.journal.last_seq() == journal.last_seq()
        seq = me.perceive("the bridge opens at noon", conversation="harbour")  # a turn of that conversation
        assert next(me.journal.read(since=seq, limit=1)).event.originator_id == "harbour"
        reply = me.say("when does the bridge open?", conversation="harbour", memory=False)
        assert reply.conversation == "harbour" and reply.thought_seq > seq
        rated = me.rate(None, 0.4, conversation="harbour")  # the conversation's last thought
        assert next(me.journal.read(since=rated, limit=1)).event.data["event"] == str(
            next(me.journal.read(since=reply.thought_seq, limit=1)).event.id)
        hits = me.recall("bridge", k=2)
        assert len(hits) == 2 and seq in [hit.seq for hit in hits]
        assert me.evolve(dry_run=True, config=CONFIG).status == "dry run"
        outcome = me.evolve(config=CONFIG)
        assert outcome.status == "promoted", outcome.why
        assert [(g.name, g.status, g.root_sha256) for g in me.generations()] == [
            ("gen-1", "promoted", outcome.root_sha256)]
        assert chain(lineage(journal))[0].root_sha256 == outcome.root_sha256
