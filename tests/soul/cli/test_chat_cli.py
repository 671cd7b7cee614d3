"""`soul say`, `soul chat`, `soul rate` as a user meets them: the tiny model in-process for most,
and one end-to-end run of `soul say` on the embedded SmolLM2 in real processes."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from evolution.lineage import chain, lineage
from evolution.weights.model import MODEL_ID
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from soul.agent.loop import Soul, help_line
from soul.cli import main
from soul.cli.mind import HISTORY, PROMPT
from tests.evolution_support import CONFIG as EVOLUTION
from tests.evolution_support import journal_moments
from tests.support import drop_schema
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=4)


@pytest.fixture
def app(nats_url: str, pg_url: str, app_name: str) -> Iterator[str]:
    yield app_name
    drop_schema(pg_url, app_name)


def soul(app: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--app", app, *args], input=stdin)


def journaled(app: str) -> list[str]:
    with Journal(app) as journal:
        return [e.event.type for e in journal.read()]


def test_say_streams_the_reply_and_json_describes_the_turn(app: str, tiny: Path) -> None:
    said = soul(app, "say", "Hello there", "--model", str(tiny))
    assert said.exit_code == 0, said.output
    with Journal(app) as journal:
        thought = next(e.event for e in journal.read() if e.topic == "thought")
    assert said.stdout == thought.prose + "\n"
    as_json = soul(app, "say", "And again", "--model", str(tiny), "--json", "-c", "side")
    assert as_json.exit_code == 0, as_json.output
    turn = json.loads(as_json.stdout)
    assert turn["conversation"] == "side" and turn["thought_seq"] == turn["perception_seq"] + 1
    assert turn["reply"] == turn["generation"]["text"] and turn["generation"]["prompt_tokens"] > 0


def test_say_reads_stdin_for_a_dash_and_takes_sampling_settings(app: str, tiny: Path) -> None:
    piped = soul(app, "say", "-", "--model", str(tiny), "--json", "--max-tokens", "3", "--temperature", "0.7",
                 stdin="Line one of a note\nline two\n")
    assert piped.exit_code == 0, piped.output
    turn = json.loads(piped.stdout)
    assert turn["generation"]["generated_tokens"] <= 3
    with Journal(app) as journal:
        perception, thought = (e.event for e in journal.read() if e.topic in ("perception", "thought"))
    assert perception.prose == "Line one of a note\nline two"  # the pipe's last newline is not words
    assert thought.data["sampling"] == {"temperature": 0.7, "seed": 0, "max_tokens": 3}
    chatted = soul(app, "chat", "--model", str(tiny), "--max-tokens", "2", stdin="Hello\n")
    assert chatted.exit_code == 0, chatted.output
    with Journal(app) as journal:
        last = [e.event for e in journal.read() if e.topic == "thought"][-1]
    assert last.data["sampling"] == {"temperature": 0.0, "seed": 0, "max_tokens": 2}

    before = journaled(app)
    for stdin in ("", " \n\n"):
        empty = soul(app, "say", "-", "--model", str(tiny), stdin=stdin)
        assert (empty.exit_code, empty.stderr) == (1, "Error: PROSE is empty: there is nothing to say\n")
    too_long = soul(app, "say", "hello", "--model", str(tiny), "--max-tokens", "100000")
    assert too_long.exit_code == 1 and too_long.stderr.startswith("Error: a reply takes 1 to 128 tokens with this model")
    assert soul(app, "say", "hello", "--temperature", "-1").exit_code == 2  # click refuses it before anything runs
    assert journaled(app) == before


def test_commands_unknown_ones_and_help(app: str, tiny: Path) -> None:
    helped = soul(app, "say", "/help", "--model", str(tiny))
    assert helped.exit_code == 0 and helped.stdout == help_line() + "\n"
    unknown = soul(app, "say", "/launch rockets", "--model", str(tiny))
    assert unknown.exit_code == 0 and unknown.stdout == f"unknown command /launch; {help_line()}\n"
    assert journaled(app) == []
    noted = soul(app, "say", "/notebook buy lamp oil", "--model", str(tiny))
    assert noted.stdout == "notebook rewritten\n" and journaled(app) == ["tool_call", "notebook_written", "tool_result"]


def test_rate_by_seq_and_bad_ratings_in_one_line(app: str, tiny: Path) -> None:
    assert soul(app, "say", "Rate me", "--model", str(tiny)).exit_code == 0
    rated = soul(app, "rate", "3", "0.7", "--json")
    assert rated.exit_code == 0, rated.output
    assert json.loads(rated.stdout)["event_seq"] == 3 and json.loads(rated.stdout)["score"] == 0.7
    with Journal(app) as journal:
        judgement = list(journal.read())[-1].event
    assert judgement.type == "resonance" and judgement.data["judge"] == "user" and judgement.data["score"] == 0.7
    by_id = soul(app, "rate", judgement.data["event"], "1")
    assert by_id.exit_code == 0 and by_id.stdout.startswith("rated thought 3 at 1 (resonance event")
    for ref, reason in (("99999", "no readable event at sequence 99999"), ("abc", "'abc' is neither"),
                        ("00000000-0000-0000-0000-000000000000", "no remembered event has id")):
        bad = soul(app, "rate", ref, "0.5")
        assert bad.exit_code == 1 and bad.stderr.startswith(f"Error: {reason}") and bad.stderr.count("\n") == 1
    assert soul(app, "rate", "3", "1.5").exit_code == 2  # click refuses the range before anything runs


def test_a_bad_model_directory_is_one_line(app: str, tiny: Path, tmp_path: Path) -> None:
    missing = soul(app, "say", "hi", "--model", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and missing.stderr == f"Error: no model directory at {tmp_path / 'nowhere'}\n"
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" * 64)
    broken = CliRunner().invoke(main, ["--app", app, "say", "hi"], env={"SOUL_MODEL": str(corrupt)})
    assert broken.exit_code == 1 and broken.stderr.count("\n") == 1
    assert broken.stderr.startswith(f"Error: {corrupt / 'model.safetensors'} does not load")


def test_a_command_that_only_journals_never_reads_the_weights(app: str, tiny: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny, damaged)
    (damaged / "model.safetensors").write_bytes(b"\0" * 64)
    recalled = soul(app, "say", "/recall lighthouse", "--model", str(damaged))
    assert recalled.exit_code == 0 and recalled.stdout == "nothing recalled for 'lighthouse'\n", recalled.output
    sent = soul(app, "message", f"{app}-peer", "the bridge opens at noon", "--model", str(damaged))
    assert sent.exit_code == 0 and sent.stdout.startswith(f"sent to {app}-peer (packet "), sent.output
    assert soul(app, "window", "--model", str(damaged), "--json").exit_code == 0
    said = soul(app, "say", "hi", "--model", str(damaged))
    assert said.exit_code == 1 and said.stderr.startswith(f"Error: {damaged / 'model.safetensors'} does not load")
    assert "perception" not in journaled(app)  # refused before the words were journaled


def test_chat_answers_lines_until_end_of_input(app: str, tiny: Path) -> None:
    chatted = soul(app, "chat", "--model", str(tiny), stdin="Good evening\n\n/help\nAnother line\n")
    assert chatted.exit_code == 0, chatted.output
    assert chatted.stdout.count("soul> ") == 2 and help_line() in chatted.stdout
    assert chatted.stderr.rstrip().endswith("bye")
    assert journaled(app).count("thought") == 2


def test_a_perception_left_unanswered_is_answered_first(app: str, tiny: Path) -> None:
    with Soul.open(app, model_dir=tiny) as first:
        first.perceive("Did you hear me?")
    said = soul(app, "say", "Hello?", "--model", str(tiny))
    assert said.exit_code == 0 and "(answering seq 1, left unanswered: 'Did you hear me?')" in said.stderr
    assert journaled(app).count("thought") == 2


def test_window_shows_its_blocks_and_journals_nothing_and_say_can_go_without_memory(app: str, tiny: Path) -> None:
    model = ["--model", str(tiny)]
    assert soul(app, "say", "The lighthouse keeper is called Ada.", "-c", "facts", *model).exit_code == 0
    assert soul(app, "say", "Who keeps the lighthouse?", *model).exit_code == 0
    before = journaled(app)
    shown = soul(app, "window", "--json", *model)
    assert shown.exit_code == 0, shown.output
    window = json.loads(shown.stdout)
    kinds = [b["kind"] for b in window["blocks"]]
    assert kinds[0] == "self" and "retrieval" in kinds and kinds.count("turn") == 2 and window["memory"] is True
    assert all(set(b) == {"kind", "seq", "tokens", "text"} for b in window["blocks"])
    # The tiny model's tokenizer has a token per byte: the blocks' counts add up to the window's.
    assert sum(b["tokens"] for b in window["blocks"]) == window["tokens"] <= window["budget"]
    assert window["prompt_tokens"] > 0 and [m["role"] for m in window["messages"]] == ["system", "user", "assistant"]
    bare = json.loads(soul(app, "window", "--json", "--no-memory", "-c", "main", *model).stdout)
    assert [b["kind"] for b in bare["blocks"]] == ["self", "header", "turn"] and bare["memory"] is False
    text = soul(app, "window", *model)
    assert text.exit_code == 0 and text.stdout.startswith("--- self: ")
    assert f"--- {window['tokens']} of a {window['budget']}-token budget" in text.stdout
    assert journaled(app) == before  # looking journals nothing

    said = soul(app, "say", "--no-memory", "--json", "Who keeps the lighthouse?", *model)
    assert said.exit_code == 0, said.output
    turn = json.loads(said.stdout)
    with Journal(app) as journal:
        thought = next(e.event for e in journal.read(since=turn["thought_seq"], limit=1))
        earlier = next(e.event for e in journal.read(types=["thought"]))
    assert thought.data["window"] == "no-memory" and "window" not in earlier.data
    chatted = soul(app, "chat", "--no-memory", *model, stdin="What do you know by heart?\n")
    assert chatted.exit_code == 0 and "without memory; /help" in chatted.stderr, chatted.output
    with Journal(app) as journal:
        assert list(journal.read(types=["thought"]))[-1].event.data["window"] == "no-memory"


def test_say_twice_on_the_embedded_smollm2(nats_url: str, pg_url: str, app: str) -> None:
    """End to end, as a user: two `soul say` processes on the embedded defaults."""
    env = {**os.environ, "SOUL_APP": app}
    env.pop("SOUL_MODEL", None)
    replies = []
    for prose in ("Hello! What is your name?", "What did I just ask you?"):
        said = subprocess.run([sys.executable, "-m", "soul", "say", prose], capture_output=True, text=True,
                              env=env, timeout=600)
        assert said.returncode == 0, said.stderr
        assert "resonance unrated: self " in said.stderr  # SmolLM2's self judge journals; only a rating counts
        replies.append(said.stdout.strip())
    assert all(replies)
    with Journal(app) as journal:
        events = [e.event for e in journal.read()]
    kinds = [e.type for e in events]
    assert kinds.count("perception") == kinds.count("thought") == 2 and kinds.count("resonance") >= 2
    for event in events:
        if event.type in ("perception", "thought", "resonance"):
            assert event.prose and event.embedder.dim == 384 and event.norm == pytest.approx(1.0, abs=1e-4)
    thoughts = [e for e in events if e.type == "thought"]
    assert [t.prose.strip() for t in thoughts] == replies and thoughts[0].data["model"] == MODEL_ID
    # The second turn's window held the first exchange.
    assert thoughts[1].data["prompt_tokens"] > thoughts[0].data["prompt_tokens"] + 10


def test_the_promoted_generation_thinks_and_a_past_self_answers_as_of_its_cut(
        journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    app = journal.app
    base = build_tiny_model(tmp_path / "w0")
    journal_moments(journal, 3)
    config = tmp_path / "evolution.yaml"
    values = EVOLUTION.as_dict()
    values["lambda"] = values.pop("lam")
    config.write_text(yaml.safe_dump(values))
    evolved = CliRunner().invoke(main, ["--app", app, "evolve", "--config", str(config)], env={"SOUL_MODEL": str(base)})
    assert evolved.exit_code == 0, evolved.output
    gen1 = chain(lineage(journal))[0]
    journal.add(BifocalEvent("perception", "the tide tables changed after gen-1", [], NO_EMBEDDER, "later"))

    current = json.loads(soul(app, "say", "Hello", "--json").stdout)  # no --model: the promoted generation
    with Journal(app) as reader:
        thought = next(reader.read(since=current["thought_seq"], limit=1)).event
    assert thought.data["generation"] == "gen-1" and thought.data["model"].endswith(f"@{gen1.root_sha256[:12]}")
    assert "tide tables" in soul(app, "say", "/recall tide tables").stdout

    past = soul(app, "say", "/recall tide tables", "--as", "gen-1")
    assert past.exit_code == 0 and past.stdout == "nothing recalled for 'tide tables'\n"  # journaled after gen-1's cut
    answered = json.loads(soul(app, "say", "Who are you?", "--as", "gen-1", "--json").stdout)
    with Journal(app) as reader:
        assert next(reader.read(since=answered["thought_seq"], limit=1)).event.data["generation"] == "gen-1"
    unknown = soul(app, "say", "hi", "--as", "gen-7")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("Error: no generation gen-7 in the lineage")


def test_ctrl_c_leaves_chat_cleanly(app: str, tiny: Path) -> None:
    chat = subprocess.Popen([sys.executable, "-m", "soul", "--app", app, "chat", "--model", str(tiny)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = chat.stderr.readline()  # the soul is open and waits for a line
        assert "Ctrl-D to leave" in banner, banner
        chat.send_signal(signal.SIGINT)
        out, err = chat.communicate(timeout=60)
    finally:
        chat.kill()
    assert chat.returncode == 0 and err.strip() == "bye" and "Traceback" not in err


class Terminal:
    """`soul chat` on a pseudo-terminal, as a person at a keyboard runs it."""

    def __init__(self, env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the chat, with the terminal as its stdin, stdout and stderr
            os.execve(sys.executable, [sys.executable, "-m", "soul", "chat"], env)
        self.seen = ""

    def until(self, text: str, count: int, timeout: float = 120) -> None:
        """Read the screen until `text` has appeared `count` times."""
        deadline = time.monotonic() + timeout
        while self.seen.count(text) < count:
            assert time.monotonic() < deadline, f"waited for {text!r} x{count}; the screen: {self.seen!r}"
            if select.select([self.fd], [], [], 1)[0]:
                self.seen += os.read(self.fd, 4096).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def leave(self) -> int:
        self.type("\x04")  # Ctrl-D
        try:
            while select.select([self.fd], [], [], 60)[0] and (chunk := os.read(self.fd, 4096)):
                self.seen += chunk.decode(errors="replace")
        except OSError:  # the terminal closed with the process: EIO
            pass
        os.close(self.fd)
        return os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])


def test_chat_on_a_terminal_brings_back_earlier_sessions_lines_with_the_up_arrow(
        app: str, tiny: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SOUL_HOME": str(tmp_path / "home"), "SOUL_APP": app, "SOUL_MODEL": str(tiny), "TERM": "xterm"}
    token = "ghp_" + "a" * 36
    first = Terminal(env)
    for n, line in enumerate(["The kettle is on", f"my token is {token}"], 1):
        first.until(PROMPT, n)
        first.type(line + "\r")
    first.until(PROMPT, 3)
    assert first.leave() == 0, first.seen
    kept = tmp_path / "home" / HISTORY
    assert kept.read_text().splitlines() == ["The kettle is on", "my token is [REDACTED:github_token]"]
    assert kept.stat().st_mode & 0o777 == 0o600

    second = Terminal(env)
    second.until(PROMPT, 1)
    second.type("\x1b[A\x1b[A\r")  # up, up: the line before the last
    second.until(PROMPT, 2)
    assert second.leave() == 0, second.seen
    with Journal(app) as journal:
        perceived = [e.event.prose for e in journal.read(types=["perception"])]
    assert perceived == ["The kettle is on", "my token is [REDACTED:github_token]", "The kettle is on"]
