"""Lessons: what a curated moment teaches, restated by rule, journaled, replayed and forgotten
(evolution/lessons.py, with curation, evolve and replay on a tiny seeded model)."""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evolution.curate import training_rows
from evolution.evolve import adapters_root, evolve, rebuild
from evolution.lessons import RULES, Lesson, key_words, lessons, questions, restate, to_second_person
from evolution.lineage import chain, events, lineage, record
from evolution.replay import replay
from journal.event import NO_EMBEDDER, BifocalEvent
from journal.journal import Journal
from evolution.curate import Curation
from tests.evolution_support import CONFIG, journal_facts, journal_moments, tiny_base

V1 = "restate-v1"
RULE = CONFIG.lesson_rule  # the rule CONFIG (the default) makes new lessons by
OTHER = next(r for r in RULES if r != RULE)
FACTS = ["My sister's name is Oona.", "I am allergic to hazelnuts.", "Remember that my car's plate is KX17 ZPA."]


def test_the_person_is_restated_from_the_souls_side() -> None:
    assert to_second_person("I am allergic to hazelnuts.") == "You are allergic to hazelnuts."
    assert to_second_person("My sister's name is Oona, and I was born in 1984.") == \
        "Your sister's name is Oona, and you were born in 1984."
    assert to_second_person("I'm sure we met, but I've lost my notes.") == "You're sure you met, but you've lost your notes."
    pairs = restate("Please remember that my sister's name is Oona. The weather is fine.", V1)
    assert pairs == [("What do you know about me?", "Your sister's name is Oona."),
                     ("Remind me: my sister's name is…", "Your sister's name is Oona."),
                     ("What is my sister's name?", "Your sister's name is Oona."),
                     ("What did I tell you?", "You told me that your sister's name is Oona.")]
    assert restate("The weather is fine. Rivers carry water.", V1) == []  # says nothing of the speaker


def test_restate_v2_names_the_thing_and_asks_what_you_know_about_me_once() -> None:
    assert restate("My sister's name is Oona. I am allergic to hazelnuts.", "restate-v2") == [
        ("What do you know about me?", "Your sister's name is Oona. You are allergic to hazelnuts."),
        ("Remind me: My sister's name is…", "Your sister's name is Oona."),
        ("What is my sister's name?", "Your sister's name is Oona."),
        ("Tell me about my sister.", "Your sister's name is Oona."),
        ("Do you remember my sister?", "Your sister's name is Oona."),
        ("What do you know about my sister?", "Your sister's name is Oona."),
        ("Remind me: I am…", "You are allergic to hazelnuts.")]
    with pytest.raises(ValueError, match="unknown lesson rule 'restate-v9': use one of restate-v1, restate-v2"):
        restate("My cat is called Pilchard.", "restate-v9")


def test_a_generation_is_asked_the_cues_of_one_statement_for_its_names_and_numbers() -> None:
    assert key_words("Your sister's name is Oona.") == ("oona",)
    assert key_words("You drive a green Saab from 1987, and you told Mrs Abernethy.") == \
        ("saab", "1987", "mrs", "abernethy")
    assert key_words("You are allergic to hazelnuts.") == ()  # nothing to hold the reply to
    pairs = restate("My sister's name is Oona. I am allergic to hazelnuts.", V1)
    lesson = Lesson("l1", "m1", ("m1", "p1"), tuple(pairs))
    assert questions([lesson]) == [("Remind me: My sister's name is…", ("oona",)),
                                   ("What is my sister's name?", ("oona",))]


@given(st.lists(st.sampled_from(["My", "my", "I", "am", "was", "cat", "Oona", "is", "called", "KX17", "in", "1984",
                                 "the", "Lisbon", ".", ",", "!", "we", "our", "house"]), max_size=30),
       st.sampled_from(RULES))
def test_a_cue_never_holds_the_names_and_numbers_its_answer_teaches(words: list[str], rule: str) -> None:
    text = " ".join(words)
    pairs = restate(text, rule)
    assert pairs == restate(text, rule)  # a rule: the same words, the same lessons
    for cue, answer in pairs:
        if cue.startswith("Remind me: "):
            said = cue.removeprefix("Remind me: ").removesuffix("…").split()
            assert not any(re.search(r"\d", w) for w in said)
            assert not any(w[:1].isupper() and w not in ("My", "I") for w in said[1:])


def test_lessons_are_journaled_once_and_replayed_to_the_same_bytes(journal: Journal, soul_home: Path,
                                                                   tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    told = journal_facts(journal, FACTS)
    journal_moments(journal, 1)  # a moment whose words say nothing of the person: no lesson
    outcome = evolve(journal, soul_home, base, CONFIG)
    assert outcome.status == "promoted"
    (gen1,) = chain(lineage(journal))
    taught = lessons(journal)
    assert sorted(taught) == sorted(str(t.id) for _, t in told)
    assert gen1.curation["lessons"] == [taught[str(t.id)].id for _, t in told]
    for perception, thought in told:
        event = next(e for e in events(journal) if e.type == "lesson" and e.data["moment"] == str(thought.id))
        assert event.data["sources"] == [str(thought.id), str(perception.id)] and event.data["rule"] == RULE
        assert [tuple(p) for p in event.data["pairs"]] == restate(perception.prose, RULE)
    rows = training_rows(journal, Curation.from_data({k: gen1.curation[k] for k in (
        "generation", "after_seq", "cut", "event_ids", "scores", "corpus", "cluster", "types", "redacted", "lessons")}))
    assert len(rows) == 4 + sum(len(restate(p.prose, RULE)) for p, _ in told)
    assert rows[1]["messages"][-2:] == [{"role": "user", "content": "What do you know about me?"},
                                        {"role": "assistant", "content": "Your sister's name is Oona."}]
    assert gen1.adapter["rows"] == len(rows)
    recall = gen1.seal["recall"]  # its lessons' cues asked of gen-1 with no memory, as the user would
    assert recall["asked"] == len(questions(taught.values())) > 0 and 0 <= recall["answered"] <= recall["asked"]

    before = len(events(journal))
    shutil.rmtree(adapters_root(soul_home))  # a fresh machine with the same journal
    report = replay(journal, soul_home, "gen-1", base, from_scratch=True)
    assert report.match and report.root == gen1.root_sha256
    assert len(events(journal)) == before  # replay reads the lessons; it journals none


def test_a_lesson_of_another_rule_is_taught_as_it_was_journaled(journal: Journal, soul_home: Path,
                                                                tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    told = journal_facts(journal, FACTS)
    perception, thought = told[0]
    pairs = restate(perception.prose, OTHER)
    record(journal, "lesson", "Your sister's name is Oona.", str(uuid.uuid4()),
           {"moment": str(thought.id), "sources": [str(thought.id), str(perception.id)], "rule": OTHER,
            "pairs": [list(p) for p in pairs]})
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    (gen1,) = chain(lineage(journal))
    taught = lessons(journal, gen1.curation["lessons"])
    assert taught[str(thought.id)].pairs == tuple(pairs)  # reused, not derived again by the current rule
    assert {tuple(lesson.pairs) for m, lesson in taught.items() if m != str(thought.id)} == \
        {tuple(restate(p.prose, RULE)) for p, _ in told[1:]}
    shutil.rmtree(adapters_root(soul_home))
    assert replay(journal, soul_home, "gen-1", base, from_scratch=True).match


def test_the_config_names_the_rule_new_lessons_are_made_by(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    told = journal_facts(journal, FACTS)
    assert evolve(journal, soul_home, base, replace(CONFIG, lesson_rule=OTHER)).status == "promoted"
    (gen1,) = chain(lineage(journal))
    assert gen1.curation["config"]["lesson_rule"] == OTHER
    made = [e for e in events(journal) if e.type == "lesson"]
    assert [e.data["rule"] for e in made] == [OTHER] * len(told)
    assert [tuple(map(tuple, e.data["pairs"])) for e in made] == [tuple(restate(p.prose, OTHER)) for p, _ in told]
    shutil.rmtree(adapters_root(soul_home))
    assert replay(journal, soul_home, "gen-1", base, from_scratch=True).match


def test_a_forgotten_moment_or_perception_teaches_nothing(journal: Journal, soul_home: Path, tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    (sister, _), (allergy, allergy_thought), (car, car_thought) = journal_facts(journal, FACTS)
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    forget = [allergy_thought.id, car.id]  # the soul's reply to one, the person's own words of the other
    for event_id in forget:
        journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(event_id)}))
    report = replay(journal, soul_home, "gen-1", base)
    assert not report.match and "gen-1: 2 of its lessons were redacted since it was sealed" in report.curations

    (change,) = rebuild(journal, soul_home, base)
    assert change.changed and change.now == "gen-1"
    (gen1,) = chain(lineage(journal))
    taught = lessons(journal, gen1.curation["lessons"])
    assert [lesson.sources[1] for lesson in taught.values()] == [str(sister.id)]
    curation = Curation.from_data({k: gen1.curation[k] for k in (
        "generation", "after_seq", "cut", "event_ids", "scores", "corpus", "cluster", "types", "redacted", "lessons")})
    taught_text = " ".join(row["messages"][-1]["content"] for row in training_rows(journal, curation))
    assert "Oona" in taught_text and "hazelnut" not in taught_text and "KX17" not in taught_text
    assert replay(journal, soul_home, "gen-1", base).match  # the rebuilt lineage replays


def test_with_relearn_a_generation_learns_its_parents_lessons_again(journal: Journal, soul_home: Path,
                                                                    tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    relearn = replace(CONFIG, relearn=True)
    (sister, _), (allergy, _), _ = journal_facts(journal, FACTS)
    assert evolve(journal, soul_home, base, relearn).status == "promoted"
    journal_facts(journal, ["My cat is called Pilchard."])
    assert evolve(journal, soul_home, base, relearn).status == "promoted"
    gen1, gen2 = chain(lineage(journal))
    assert gen1.curation["relearned"] == [] and gen2.curation["relearned"] == gen1.curation["lessons"]
    curation = Curation.from_data({k: v for k, v in gen2.curation.items() if k in Curation.__dataclass_fields__})
    rows = training_rows(journal, curation)
    earlier, new = (lessons(journal, gen.curation["lessons"]).values() for gen in (gen1, gen2))
    assert len(rows) == 1 + sum(len(lesson.pairs) for lesson in new) + sum(len(lesson.pairs) for lesson in earlier)
    assert [r["messages"][-1]["content"] for r in rows[-3:]] == [a for lesson in earlier for _, a in lesson.pairs][-3:]
    shutil.rmtree(adapters_root(soul_home))
    assert replay(journal, soul_home, "gen-2", base, from_scratch=True).match

    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(allergy.id)}))
    assert "gen-2: 1 of the lessons it relearned were redacted since it was sealed" in \
        replay(journal, soul_home, "gen-2", base).curations
    assert [c.changed for c in rebuild(journal, soul_home, base)] == [True, True]
    gen1, gen2 = chain(lineage(journal))
    assert gen2.curation["relearned"] == gen1.curation["lessons"] and len(gen1.curation["lessons"]) == 2
    taught = " ".join(lesson.pairs[0][1] for lesson in lessons(journal, gen2.curation["relearned"]).values())
    assert "Oona" in taught and "hazelnut" not in taught
    assert replay(journal, soul_home, "gen-2", base).match


def test_forgetting_what_was_only_context_derives_the_generation_again(journal: Journal, soul_home: Path,
                                                                       tmp_path: Path) -> None:
    base = tiny_base(tmp_path / "w0")
    ((_, thought),) = journal_facts(journal, FACTS[:1])
    talk = thought.originator_id
    aside = BifocalEvent("perception", "The weather is nice in Tromsø today.", [0.0, 1.0, 0.0, 0.0],
                         thought.embedder, talk, data={"source": "user"})
    journal.add(aside)  # no moment of its own: only context of the next moment's row
    journal_facts(journal, ["My cat is called Pilchard."], talk=talk)
    assert evolve(journal, soul_home, base, CONFIG).status == "promoted"
    assert [c.changed for c in rebuild(journal, soul_home, base)] == [False]  # nothing forgotten yet
    journal.add(BifocalEvent("redaction", "forget", [], NO_EMBEDDER, "redactions", data={"event": str(aside.id)}))
    (change,) = rebuild(journal, soul_home, base)
    assert change.changed and change.why == "the context of its moments changed", change
