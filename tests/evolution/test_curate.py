"""Curation on a real journal: threshold, window, judges, corpus, clusters, redactions, training
rows, and the evolution config it runs under."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evolution.config import LORA_KEYS, EvolutionConfig, canonical_json
from evolution.curate import CONTEXT_TURNS, Curation, curate, kmeans_labels, redacted_ids, summary, training_rows
from evolution.merge_config import MergeConfigError
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from projections.resonance import combine

EMBEDDER = Embedder("synthetic@1", 4)
CONFIG = EvolutionConfig()


class Script:
    """Events of a few conversations, with per-originator versions, appended in one batch."""

    def __init__(self) -> None:
        self.events: list[BifocalEvent] = []
        self.versions: dict[object, int] = {}

    def add(self, kind: str, prose: str, originator: object = None, vector=(1, 0, 0, 0), **fields) -> BifocalEvent:
        originator = originator if originator is not None else uuid.uuid4()
        version = self.versions[originator] = self.versions.get(originator, 0) + 1
        has_vector = vector is not None
        event = BifocalEvent(kind, prose, np.array(vector if has_vector else [], "<f4"),
                             EMBEDDER if has_vector else Embedder("none", 0),
                             originator_id=originator, originator_version=version, **fields)
        self.events.append(event)
        return event

    def rate(self, event: BifocalEvent, score: float, judge: str = "user") -> BifocalEvent:
        return self.add("resonance", f"{judge} rates {score}", None, None,
                        data={"event": str(event.id), "score": score, "judge": judge})

    def journal(self, journal: Journal) -> tuple[int, int]:
        """Append everything; the window (after_seq, cut] it occupies."""
        before = journal.last_seq()
        seqs = journal.append(self.events)
        return before, seqs[-1]


def ids(*events: BifocalEvent) -> tuple[str, ...]:
    return tuple(str(e.id) for e in events)


def test_threshold_judges_and_journal_order(journal: Journal) -> None:
    s = Script()
    talk = uuid.uuid4()
    high, edge, low, unrated, shared, outvoted = (s.add("thought", f"t{i}", talk) for i in range(6))
    s.rate(edge, 0.9)
    s.rate(high, 0.95)
    s.rate(low, 0.89)
    s.rate(shared, 1.0, "self")
    s.rate(shared, 0.95, "similarity")  # judges that do not count (projections.resonance.JUDGES): no resonance
    s.rate(outvoted, 1.0, "self")
    s.rate(outvoted, 0.5, "user")  # the user's rating decides alone
    s.rate(unrated, 0.95, "oracle")  # not a judge: no resonance
    after, cut = s.journal(journal)
    curation = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=set())
    assert curation.event_ids == ids(high, edge)
    assert curation.scores == pytest.approx((0.95, 0.9))
    assert curation.types == ("thought",) * 2
    assert (curation.generation, curation.after_seq, curation.cut) == (1, after, cut)
    assert summary(curation) == {
        "generation": 1, "window": [after, cut], "events": 2, "by_type": {"thought": 2},
        "min_resonance": pytest.approx(0.9), "mean_resonance": pytest.approx(0.925), "corpus": None,
        "cluster": None, "redactions_honoured": 0,
    }


def test_window_and_judgements_as_of_the_cut(journal: Journal) -> None:
    s = Script()
    before_window = s.add("thought", "said before the previous cut")
    s.rate(before_window, 1.0)
    after, _ = s.journal(journal)
    after = journal.last_seq()
    s = Script()
    lowered, raised, late = (s.add("thought", f"t{i}") for i in range(3))
    s.rate(lowered, 0.95)
    s.rate(lowered, 0.2)  # the latest judgement of a judge wins
    s.rate(raised, 0.2)
    s.rate(raised, 0.95)
    s.rate(late, 0.3)
    _, cut = s.journal(journal)
    s = Script()
    s.rate(late, 1.0)  # after the cut: does not count for this generation
    s.rate(lowered, 1.0)
    s.journal(journal)
    curation = curate(journal, generation=2, after_seq=after, cut=cut, config=CONFIG, redacted=set())
    assert curation.event_ids == ids(raised)
    later = curate(journal, generation=2, after_seq=after, cut=journal.last_seq(), config=CONFIG, redacted=set())
    assert later.event_ids == ids(lowered, raised, late)
    with pytest.raises(ValueError, match="window"):
        curate(journal, generation=2, after_seq=cut, cut=after, config=CONFIG, redacted=set())


def test_corpus_targeting(journal: Journal) -> None:
    s = Script()
    mine = s.add("chunk_ingested", "def parse(): ...", corpus="mylib", data={"path": "a.py", "lines": [1, 9]})
    other = s.add("chunk_ingested", "fn main() {}", corpus="other", data={"path": "main.rs", "lines": [1, 3]})
    thought = s.add("thought", "a thought, no corpus")
    for event in (mine, other, thought):
        s.rate(event, 1.0)
    after, cut = s.journal(journal)
    everything = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=set())
    assert everything.event_ids == ids(mine, other, thought)
    assert summary(everything)["by_type"] == {"chunk_ingested": 2, "thought": 1}
    only = curate(journal, generation=1, after_seq=after, cut=cut, config=EvolutionConfig(corpus="mylib"),
                  redacted=set())
    assert (only.event_ids, only.corpus) == (ids(mine), "mylib")
    assert training_rows(journal, only) == [{"messages": [
        {"role": "user", "content": "mylib: a.py, lines 1-9"},
        {"role": "assistant", "content": "def parse(): ..."},
    ]}]


def test_cluster_targeting(journal: Journal) -> None:
    s = Script()
    rng = np.random.default_rng(7)
    events = []
    for i in range(12):  # two tight groups, interleaved in journal order, the second group first
        centre = (0, 1, 0, 0) if i % 2 == 0 else (1, 0, 0, 0)
        events.append(s.add("thought", f"t{i}", vector=np.array(centre) + 0.01 * rng.standard_normal(4)))
        s.rate(events[-1], 1.0)
    after, cut = s.journal(journal)
    config = {"clusters": 2, "seed": 3}
    first = curate(journal, generation=1, after_seq=after, cut=cut, config=EvolutionConfig(**config, cluster=0),
                   redacted=set())
    second = curate(journal, generation=1, after_seq=after, cut=cut, config=EvolutionConfig(**config, cluster=1),
                    redacted=set())
    assert first.event_ids == ids(*events[0::2])  # cluster 0 holds the journal's first curated event
    assert second.event_ids == ids(*events[1::2])
    assert first.cluster == 0 and second.cluster == 1


@given(st.lists(st.lists(st.floats(-1, 1, width=32), min_size=3, max_size=3), min_size=1, max_size=30),
       st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_kmeans_labels_are_numbered_by_first_member(points, k, seed) -> None:
    vectors = [np.array(p) for p in points]
    labels = kmeans_labels(vectors, k, seed)
    assert len(labels) == len(points)
    seen: list[int] = []
    for label in labels:  # 0 first, then each new cluster the next number
        if label not in seen:
            assert label == len(seen)
            seen.append(label)
    assert len(seen) <= min(k, len(points))
    assert np.array_equal(labels, kmeans_labels(vectors, k, seed))


def test_kmeans_refuses_mixed_dimensions() -> None:
    with pytest.raises(ValueError, match="different dimensions"):
        kmeans_labels([np.ones(3), np.ones(4)], 2, 0)


def test_redactions_leave_curation_and_context(journal: Journal) -> None:
    s = Script()
    talk = uuid.uuid4()
    secret = s.add("perception", "my password is hunter2", talk, data={"source": "user"})
    kept = s.add("thought", "noted, I will not repeat it", talk, causation_id=secret.id)
    forgotten = s.add("thought", "hunter2 is a weak password", talk)
    for event in (kept, forgotten):
        s.rate(event, 1.0)
    s.add("redaction", "forget", "redactions", None, data={"event": str(secret.id)})
    s.add("redaction", "forget", "redactions", None, data={"event": str(forgotten.id)})
    after, cut = s.journal(journal)
    redacted = redacted_ids(journal)
    assert redacted == {str(secret.id), str(forgotten.id)}
    curation = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=redacted)
    assert curation.event_ids == ids(kept)
    assert curation.redacted == tuple(sorted(redacted))
    assert training_rows(journal, curation) == [{"messages": [
        {"role": "assistant", "content": "noted, I will not repeat it"}]}]
    unredacted = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=set())
    assert unredacted.event_ids == ids(kept, forgotten)
    assert training_rows(journal, unredacted)[0]["messages"][0]["content"] == "my password is hunter2"


def test_training_rows_from_the_journal_alone(journal: Journal) -> None:
    s = Script()
    talk, elsewhere = uuid.uuid4(), uuid.uuid4()
    s.add("self_defined", "I am an old self.", "self")
    cause = s.add("perception", "what is the capital of France?", elsewhere, data={"source": "user"})
    s.add("self_defined", "I am a curious soul.", "self")
    history = []
    for i in range(CONTEXT_TURNS + 2):
        kind = ("perception", "thought", "tool_result")[i % 3]
        history.append(s.add(kind, f"turn {i}", talk, data={"source": "agent:bob", "tool": "recall"}))
    answer = s.add("thought", "Paris.", talk, causation_id=cause.id)
    s.add("self_defined", "I am a newer self.", "self")
    later = s.add("thought", "Later words.", uuid.uuid4())
    s.rate(later, 1.0)
    s.rate(answer, 1.0)
    after, cut = s.journal(journal)
    curation = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=set())
    assert curation.event_ids == ids(answer, later)  # journal order, not the order of rating
    rows = training_rows(journal, curation)
    assert rows == training_rows(journal, curation)
    first = rows[0]["messages"]
    assert first[0] == {"role": "system", "content": "I am a curious soul."}
    assert first[1] == {"role": "user", "content": "what is the capital of France?"}  # the cause, oldest
    role = {"perception": "user", "thought": "assistant", "tool_result": "user"}
    context = history[-CONTEXT_TURNS:]
    assert [m["role"] for m in first[2:-1]] == [role[e.type] for e in context]
    shown = {"perception": "[agent:bob] {}", "thought": "{}", "tool_result": "[tool recall] {}"}
    assert [m["content"] for m in first[2:-1]] == [shown[e.type].format(e.prose) for e in context]
    assert first[-1] == {"role": "assistant", "content": "Paris."}
    assert rows[1]["messages"] == [{"role": "system", "content": "I am a newer self."},
                                   {"role": "assistant", "content": "Later words."}]


def test_missing_curated_event_is_an_error(journal: Journal) -> None:
    s = Script()
    s.add("thought", "there")
    after, cut = s.journal(journal)
    ghost = Curation(1, after, cut, (str(uuid.uuid4()),), (1.0,), types=("thought",))
    with pytest.raises(ValueError, match="missing"):
        training_rows(journal, ghost)


def test_curation_round_trips_as_event_data() -> None:
    curation = Curation(3, 10, 20, ("a", "b"), (0.9, 1.0), "mylib", None, ("thought", "chunk_ingested"), ("z",))
    data = curation.as_data()
    BifocalEvent("curation_sealed", "sealed", np.zeros(0), data=data)  # journal-safe JSON
    assert Curation.from_data(data) == curation


JUDGES = ("user", "self", "similarity")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    latest=st.lists(st.dictionaries(st.sampled_from(JUDGES), st.sampled_from([0.0, 0.5, 0.85, 0.9, 0.95, 1.0]),
                                    min_size=1), min_size=1, max_size=6),
    stale=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(JUDGES), st.floats(0, 1)), max_size=8),
    orders=st.lists(st.randoms(use_true_random=False), min_size=2, max_size=2),
)
def test_order_of_judgements_does_not_matter(journal: Journal, latest, stale, orders) -> None:
    """Only each judge's latest score counts: the same latest scores reached through judgements
    made in any order give the same curation."""
    chains: dict[tuple[int, str], list[float]] = {}  # (thought, judge) -> its scores, the latest last
    for i, judge, score in stale:
        if judge in latest[i % len(latest)]:
            chains.setdefault((i % len(latest), judge), []).append(score)
    for i, scores in enumerate(latest):
        for judge, score in scores.items():
            chains.setdefault((i, judge), []).append(score)
    curated = []
    for order in orders:
        s = Script()
        thoughts = [s.add("thought", f"t{i}") for i in range(len(latest))]
        for i, judge, score in _interleave(chains, order):
            s.rate(thoughts[i], score, judge)
        after, cut = s.journal(journal)
        curation = curate(journal, generation=1, after_seq=after, cut=cut, config=CONFIG, redacted=set())
        positions = {str(t.id): i for i, t in enumerate(thoughts)}
        curated.append(([positions[e] for e in curation.event_ids], curation.scores))
    expected = [i for i, scores in enumerate(latest) if (combine(scores) or 0.0) >= CONFIG.threshold]  # None: unrated
    assert curated[0][0] == expected
    assert curated[0] == curated[1]


def _interleave(chains: dict[tuple[int, str], list[float]], order) -> list[tuple[int, str, float]]:
    """All judgements, each chain's in its own order, the chains merged at random."""
    pending = [(key, list(scores)) for key, scores in sorted(chains.items())]
    merged = []
    while pending:
        at = order.randrange(len(pending))
        (i, judge), scores = pending[at]
        merged.append((i, judge, scores.pop(0)))
        if not scores:
            pending.pop(at)
    return merged


# -- the config ------------------------------------------------------------------------------


def test_config_defaults_follow_the_design() -> None:
    c = EvolutionConfig()
    assert (c.threshold, c.rank, c.keys, c.num_layers, c.seed) == (0.9, 16, LORA_KEYS, -1, 0)
    assert (c.normalize, c.int8_mask) == (True, False)
    assert EvolutionConfig.parse("") == c
    assert c.digest() == EvolutionConfig().digest() != EvolutionConfig(seed=1).digest()


def test_a_config_journaled_before_a_key_existed_means_what_it_meant_then() -> None:
    now = EvolutionConfig.parse("lesson_rule: restate-v2\nrelearn: true")
    older = {k: v for k, v in EvolutionConfig().as_dict().items() if k not in ("lesson_rule", "relearn")}  # before the keys
    assert (EvolutionConfig.journaled(older).lesson_rule, EvolutionConfig.journaled(older).relearn) == ("restate-v1", False)
    assert EvolutionConfig.journaled(older).digest() == hashlib.sha256(canonical_json(older)).hexdigest()
    assert EvolutionConfig.journaled(now.as_dict()) == now and now.digest() != EvolutionConfig.journaled(older).digest()


def test_config_reads_mergekit_vocabulary(tmp_path) -> None:
    path = tmp_path / "evolution.yaml"
    path.write_text("merge_method: ties\nparameters: {density: 0.5, weight: 0.7, lambda: 0.8, int8_mask: true}\n"
                    "learning_rate: 1e-4\nclusters: 3\ncluster: 2\nkeys: [self_attn.q_proj]\n")
    c = EvolutionConfig.load(path)
    assert (c.density, c.weight, c.lam, c.int8_mask, c.normalize) == (0.5, 0.7, 0.8, True, True)
    assert (c.learning_rate, c.clusters, c.cluster, c.keys) == (1e-4, 3, 2, ("self_attn.q_proj",))
    flat = EvolutionConfig.parse("density: 0.5\nweight: 0.7\nlambda: 0.8\nint8_mask: true\n"
                                 "learning_rate: 0.0001\nclusters: 3\ncluster: 2\nkeys: [self_attn.q_proj]\n")
    assert flat == c and flat.digest() == c.digest()
    assert EvolutionConfig(**c.as_dict()) == c
    assert c.training() == {"seed": 0, "rank": 16, "keys": ["self_attn.q_proj"], "num_layers": -1, "iters": c.iters,
                            "learning_rate": 1e-4, "batch_size": c.batch_size, "max_seq_length": c.max_seq_length,
                            "scale": c.scale}


@pytest.mark.parametrize("text, message", [
    ("merge_method: dare_ties", "merge_method"),
    ("parameters: {rescale: true}", "parameters"),
    ("density: 0.3\nparameters: {density: 0.5}", "both flat and under"),
    ("threshold: 1.5", "threshold"),
    ("clusters: 4", "go together"),
    ("clusters: 2\ncluster: 2", "does not exist"),
    ("rank: 0", "rank"),
    ("num_layers: 0", "num_layers"),
    ("iters: 1.5", "iters"),
    ("keys: self_attn.q_proj", "keys"),
    ("normalize: yes please", "normalize"),
    ("learning_rat: 0.1", "unknown keys"),
    ("- 1", "mapping"),
    ("a: [", "not valid YAML"),
    ("anchor: anchor-v0", "no anchor set 'anchor-v0'; shipped: anchor-v1"),
    ("anchor: ../../etc/passwd", "no anchor set"),
    ("lesson_rule: restate-v9", "lesson_rule: one of restate-v1, restate-v2, not 'restate-v9'"),
    ("relearn: maybe", "relearn"),
])
def test_config_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(MergeConfigError, match=message):
        EvolutionConfig.parse(text)
