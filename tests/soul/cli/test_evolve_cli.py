"""`soul evolve`, `soul generations`, `soul replay`, `soul export` and `soul forget` as a user
meets them, on a tiny seeded model and a real journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from xml.etree import ElementTree

import mlx.core as mx
import pytest
import yaml
from click.testing import CliRunner
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_lm_load

from evolution.lineage import chain, lineage
from evolution.plot import number
from evolution.weights.blas import blas_in_use
from evolution.weights.files import model_hashes, root_hash
from journal.journal import Journal
from soul.cli import main
from tests.evolution_support import CONFIG, journal_facts, journal_moments
from tests.tiny_model import build_tiny_model

# The tests' fast config, written as a user would: mergekit's vocabulary under `parameters:`.
MERGEKIT_KEYS = ("density", "weight", "normalize", "int8_mask")


@pytest.fixture
def setup(journal: Journal, soul_home: Path, tmp_path: Path):
    """(invoke, journal, the moments' thoughts): `invoke(*args)` runs `soul --app APP ...` with
    the tiny model as W0 and the fast config in a YAML file."""
    model = build_tiny_model(tmp_path / "w0")
    values = CONFIG.as_dict()
    values["lambda"] = values.pop("lam")
    parameters = {key: values.pop(key) for key in (*MERGEKIT_KEYS, "lambda")}
    config = tmp_path / "evolution.yaml"
    config.write_text(yaml.safe_dump({"merge_method": "ties", **values, "parameters": parameters}))
    thoughts = journal_moments(journal, 3)
    app = journal.app

    def invoke(*args: str, options: tuple[str, ...] = ()):
        runner = CliRunner()
        result = runner.invoke(main, ["--app", app, *args, *options], env={"SOUL_MODEL": str(model)})
        return result

    invoke.config = str(config)
    invoke.model = model
    invoke.app = app
    return invoke, journal, thoughts


def test_dry_run_shows_what_would_be_curated_and_changes_nothing(setup) -> None:
    invoke, journal, _ = setup
    result = invoke("evolve", "--dry-run", "--config", invoke.config)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("gen-1 would learn 3 moments from seq 1..")
    assert "(3 thought); resonance min 0.95 mean 0.95; corpus any, cluster any; 0 redactions honoured" in result.stdout
    figures = json.loads(invoke("evolve", "--dry-run", "--json", "--config", invoke.config).stdout)
    assert figures["status"] == "dry run" and figures["curation"]["events"] == 3
    assert lineage(journal) == [] and not (Path(os.environ["SOUL_HOME"]) / "generations").exists()


def test_nothing_to_curate_says_why(setup, tmp_path: Path) -> None:
    invoke, _, _ = setup
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({**yaml.safe_load(Path(invoke.config).read_text()), "threshold": 0.99}))
    dry = invoke("evolve", "--dry-run", "--config", str(strict))
    assert dry.stdout == "gen-1 would have nothing to curate in seq 1..9: 0 moments reach resonance 0.99; min_events is 1\n"
    result = invoke("evolve", "--config", str(strict))
    assert result.exit_code == 0
    assert result.stdout == "nothing to curate in seq 1..9: 0 moments reach resonance 0.99; min_events is 1\n"


def test_evolve_generations_replay_export(setup, tmp_path: Path) -> None:
    invoke, journal, _ = setup
    result = invoke("evolve", "--config", invoke.config)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("gen-1 promoted: 3 moments from seq 1..9; root ")
    assert "adapter trained" in result.stdout and "curated loss" in result.stdout and "; took " in result.stdout
    assert " of this machine's matmul rate (" in result.stdout
    gen1 = chain(lineage(journal))[0]

    listed = invoke("generations")
    assert listed.exit_code == 0 and listed.stdout.startswith("* gen-1   cut        9  events     3  adapter ")
    assert gen1.root_sha256[:12] in listed.stdout and listed.stdout.rstrip().endswith("promoted")
    row = json.loads(invoke("generations", "--json").stdout)
    assert row["generation"] == "gen-1" and row["active"] and row["root_sha256"] == gen1.root_sha256
    assert row["max_drift"] == max(gen1.seal["drift"].values())

    plot = tmp_path / "lineage.svg"
    charted = invoke("generations", "--plot", str(plot))
    assert charted.exit_code == 0 and f"lineage charted in {plot}: 1 sealed run\n" == charted.stderr
    texts = [t.text for t in ElementTree.fromstring(plot.read_text()).iter("{http://www.w3.org/2000/svg}text")]
    assert "Anchor-set perplexity (lower is better)" in texts and {"W0", "1", "generation"} <= set(texts)
    assert number(gen1.seal["perplexity"]["after"]) in texts  # each point shows its value
    refused = invoke("generations", "--plot", str(tmp_path / "lineage.png"))
    assert refused.exit_code == 1 and "--plot writes an SVG chart: name the file FILE.svg" in refused.output

    replayed = invoke("replay", "--to", "gen-1")
    assert replayed.exit_code == 0, replayed.output
    assert replayed.stdout == f"MATCH gen-1 root {gen1.root_sha256} (1 of 1 adapters from the cache)\n"
    assert json.loads(invoke("replay", "--to", "gen-1", "--json").stdout)["match"] is True

    out = tmp_path / "exported"
    exported = invoke("export", "gen-1", str(out))
    assert exported.exit_code == 0 and exported.stdout.startswith(f"gen-1 (root {gen1.root_sha256[:12]}) exported")
    assert root_hash(model_hashes(out)) == gen1.root_sha256
    model, tokenizer = mlx_lm_load(str(out))
    loaded = dict(tree_flatten(model.parameters()))
    on_disk = mx.load(str(out / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    assert mx.array_equal(loaded[name], on_disk[name]).item()
    assert not mx.array_equal(on_disk[name], mx.load(str(invoke.model / "model.safetensors"))[name]).item()
    assert tokenizer.encode("hi")

    again = invoke("export", "gen-1", str(out))
    assert again.exit_code == 1 and "is not empty" in again.output


def test_forget_then_rebuild_names_the_changed_generations(setup) -> None:
    invoke, journal, thoughts = setup
    outcome = json.loads(invoke("evolve", "--config", invoke.config, "--json").stdout)
    assert outcome["status"] == "promoted"  # and where its time went, stage by stage
    assert list(outcome["seconds"]) == ["curate", "lessons", "parent", "rows", "train", "merge", "evaluate", "promote"]
    assert all(s >= 0 for s in outcome["seconds"].values()) and outcome["seconds"]["train"] > 0
    work = outcome["training"]  # and the training's arithmetic against this machine's matmul rate
    assert work["tokens"] > 0 and work["parameters"] > 0 and 0 < work["seconds"] < outcome["seconds"]["train"]
    assert work["gflop"] > 0 and work["matmul_gflop_per_s"] > 0 and 0 < work["of_matmul"] < 1
    old = chain(lineage(journal))[0]
    seq = next(e.seq for e in journal.read() if e.event and e.event.id == thoughts[1].id)

    forgot = invoke("forget", str(seq))
    assert forgot.exit_code == 0, forgot.output
    assert f"thought {thoughts[1].id} (seq {seq}) is forgotten" in forgot.stdout
    assert "gen-1 learnt from it: `soul evolve --rebuild` derives the lineage without it" in forgot.output
    assert "already forgotten" in invoke("forget", str(thoughts[1].id)).stdout

    rebuilt = invoke("evolve", "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.split() == ["gen-1", "changed", "->", "gen-1", "1", "moments", "left", "out"]
    new = chain(lineage(journal))[0]
    assert str(thoughts[1].id) not in new.event_ids and new.root_sha256 != old.root_sha256
    rows = [json.loads(line) for line in invoke("generations", "--json").stdout.splitlines()]
    assert [(r["root_sha256"], r["superseded"], r["active"]) for r in rows] == [
        (old.root_sha256, True, False), (new.root_sha256, False, True)]  # the old epoch is shown, not hidden
    listed = invoke("generations").stdout.splitlines()
    assert listed[0].endswith(f"promoted, superseded (epoch {old.epoch})") and listed[1].startswith("* gen-1")
    assert invoke("replay", "--to", "gen-1").stdout.startswith("MATCH gen-1")

    for thought in thoughts:  # forgetting every moment leaves no generation, and says so
        assert invoke("forget", str(thought.id)).exit_code == 0
    gone = invoke("evolve", "--rebuild")
    assert gone.exit_code == 0 and "-> gone" in gone.stdout, gone.output
    rows = [json.loads(line) for line in invoke("generations", "--json").stdout.splitlines()]
    assert [(r["superseded"], r["active"]) for r in rows] == [(True, False), (True, False)]


def test_erase_names_who_learnt_it_and_the_rebuilt_lineage_replays(setup) -> None:
    invoke, journal, thoughts = setup
    assert invoke("evolve", "--config", invoke.config).exit_code == 0
    seq = next(e.seq for e in journal.read() if e.event and e.event.id == thoughts[1].id)

    def naming_it() -> list[int]:  # its lessons (evolution/lessons.py): derived from it, erased with it
        return [e.seq for e in journal.read(types=["lesson"]) if str(thoughts[1].id) in str(e.event.data)]

    lessons = naming_it()
    erased = invoke("forget", "--erase", str(seq))
    assert erased.exit_code == 0, erased.output
    derived = f" and {len(lessons)} event{'s' * (len(lessons) != 1)} derived from it" if lessons else ""
    assert f"thought {thoughts[1].id} (seq {seq}){derived} is forgotten and erased" in erased.stdout
    assert f"journal: seq {', '.join(map(str, [seq, *lessons]))} erased (1 replica)" in erased.stdout
    assert naming_it() == []
    assert ("gen-1 learnt from it: `soul evolve --rebuild` derives the lineage without it; "
            "`soul replay` of gen-1 can no longer MATCH") in erased.stderr
    assert seq not in [e.seq for e in journal.read()]
    diverged = invoke("replay", "--to", "gen-1")
    assert diverged.exit_code == 1 and "gen-1: 1 of its moments were redacted since it was sealed" in diverged.stdout

    rebuilt = invoke("evolve", "--rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert rebuilt.stdout.split() == ["gen-1", "changed", "->", "gen-1", "1", "moments", "left", "out"]
    assert invoke("replay", "--to", "gen-1").stdout.startswith("MATCH gen-1")


def test_erasing_a_perception_erases_the_lessons_that_restate_it(setup) -> None:
    invoke, journal, _ = setup
    marker = f"zq{uuid.uuid4().hex}"
    [(told, _)] = journal_facts(journal, [f"My passport number is {marker}."])
    assert invoke("evolve", "--config", invoke.config).exit_code == 0
    holding = [e.seq for e in journal.read() if marker in e.event.prose + str(e.event.data)]
    assert len(holding) > 1  # the perception, and the lesson that restates it
    seq = next(e.seq for e in journal.read() if e.event.id == told.id)

    erased = invoke("forget", "--erase", str(seq))
    assert erased.exit_code == 0, erased.output
    assert f"perception {told.id} (seq {seq}) and {len(holding) - 1} event" in erased.stdout
    assert f"journal: seq {', '.join(map(str, holding))} erased (1 replica)" in erased.stdout
    assert "gen-1 learnt from it" in erased.stderr  # through the thought that answered it
    assert [e.seq for e in journal.read() if marker in e.event.prose + str(e.event.data)] == []


@pytest.mark.parametrize("args, complaint", [
    (("replay", "--to", "gen-9"), "no generation gen-9 in the lineage; promoted generations: none yet"),
    (("replay", "--to", "nine"), "'nine' is not a generation; name one as gen-N"),
    (("export", "gen-2", "/tmp/nowhere-soul-export"), "no generation gen-2"),
    (("forget", "999999"), "no decodable event at seq 999999"),
    (("forget", "not-an-id"), "'not-an-id' is neither a sequence number nor an event id"),
    (("evolve", "--rebuild"), "there is no generation to rebuild yet"),
    (("evolve", "--config", "/nonexistent/evolution.yaml"), "cannot read the evolution config"),
    (("evolve", "--dry-run", "--rebuild"), "--dry-run and --rebuild do not go together"),
])
def test_mistakes_end_in_one_line(setup, args, complaint) -> None:
    invoke, _, _ = setup
    result = invoke(*args)
    assert result.exit_code in (1, 2)
    assert complaint in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 or result.exit_code == 2  # usage errors add a hint


def test_bad_config_and_lineage_events_are_refused(setup, tmp_path: Path) -> None:
    invoke, journal, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: slerp\n")
    result = invoke("evolve", "--config", str(bad))
    assert result.exit_code == 1 and result.output == "Error: merge_method must be 'ties', not 'slerp'\n"
    assert invoke("evolve", "--config", invoke.config).exit_code == 0
    sealed = next(e for e in journal.read(types=["generation_sealed"]))
    refused = invoke("forget", str(sealed.seq))
    assert refused.exit_code == 1 and "lineage's bookkeeping cannot be forgotten" in refused.output


@pytest.mark.skipif(blas_in_use().name.startswith("reference"), reason="needs an optimized BLAS to differ from")
def test_replay_on_another_blas_reports_the_divergence_and_fails(setup) -> None:
    invoke, journal, _ = setup
    assert invoke("evolve", "--config", invoke.config).exit_code == 0
    done = subprocess.run([sys.executable, "-m", "soul", "--app", invoke.app, "replay", "--to", "gen-1"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SOUL_MODEL": str(invoke.model), "SOUL_BLAS": "reference"})
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("DIVERGED gen-1: root ")
    assert any(line.startswith("  adapter gen-1: rebuilt ") for line in lines)  # trained again: no cached key
    assert any(line.startswith("  environment blas: sealed OpenBLAS") for line in lines)
    assert lines[-1] == "  (bit-exact replay holds only on the same mlx version, device class and BLAS)"
