"""Lessons: what a curated moment teaches, restated so it can be recalled without its context.

A moment's own training row teaches the soul's reply in the context it was given; asked later
with no memory in the window, the soul has nothing to reply *to*, and what the person said is
not learnt at all. SEAL (Zweiger et al. 2025, arXiv 2506.10943) found that a passage trained as
itself teaches little, and that training on restatements of it ("self-edits": implications,
question-answer pairs) is what makes its content recallable without it.

`restate` is that rule, deterministic and small: the person's sentences that speak of
themselves ("my sister's name is Oona") are turned to the soul's side ("Your sister's name is
Oona.") and taught as answers to a few cues. The cue never holds the sentence's names and
numbers, so the answer has to come from the weights. Two versions, by name in `RULES`:

The evolution config's `lesson_rule` picks the one a new lesson is made by.

- restate-v1: what do you know about me, remind me of <the
  words before the first name or number>, what is my <thing> (for "my <thing> is ..."), and
  what did I tell you, asked of every statement.
- restate-v2: the shared cues ask the model to answer any question with a fact about the
  person (docs/evolution.md, "Why the real path learnt less"), so "what do you know about me"
  is asked once per lesson and "what did I tell you" not at all, and a "my <thing> is"
  statement gets cues that name its thing instead: tell me about my <thing>, do you remember
  my <thing>, what do you know about my <thing>.

Lessons are made at curation time and journaled (`lesson` events naming the moment and the
perception they come from), so a generation stays a function of the journal alone: replay reads
the lessons, it does not derive them again, and a forgotten moment or perception takes its
lessons with it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evolution.lineage import events, record
from journal.journal import Journal

if TYPE_CHECKING:
    from evolution.curate import Curation

MAX_SENTENCES = 8  # of one perception: a long message is a document, not a fact about its writer

_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_WORD = re.compile(r"[\w'’:-]+|[^\w\s]")
_FIRST_PERSON = {"i", "i'm", "i've", "i'd", "i'll", "me", "my", "mine", "myself", "we", "our", "ours", "us"}
_SUBJECTS = {"i", "i'm", "i've", "i'd", "i'll", "my", "mine", "we", "our", "ours"}
_TO_SECOND = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "i'm": "you're",
              "i've": "you've", "i'd": "you'd", "i'll": "you'll", "we": "you", "us": "you", "our": "your",
              "ours": "yours", "ourselves": "yourselves"}
_AFTER_I = {"am": "are", "was": "were"}  # "I am" -> "you are": the verb agrees with its new subject
_PEOPLE = {"you", "your", "yours", "you're", "you've", "you'd", "you'll", "yourself", "i", "i'm", "i've", "i'd", "i'll"}
_GENERAL_CUES = ("What do you know about me?", "What did I tell you?")  # every lesson has them: they name no statement
_LEAD_INS = re.compile(r"^(?:(?:please\s+)?(?:remember|note|know)(?:\s+that)?|by the way|fyi|also|and|so)[,:]?\s+", re.I)
_COPULA = re.compile(r"^(my|our) (.+?) (is|are|was|were) (.+)$", re.I)


def restate(perception: str, rule: str) -> list[tuple[str, str]]:
    """(cue, answer) pairs teaching what `perception` says of its speaker by `rule` (a name in
    RULES); [] when it says nothing of them (no statement with the speaker as its subject)."""
    if rule not in RULES:
        raise ValueError(f"unknown lesson rule {rule!r}: use one of {', '.join(RULES)}")
    sentences = [s for s in (_clean(m.group(0)) for m in _SENTENCE.finditer(perception)) if _speaks_of_self(s)]
    sentences = sentences[:MAX_SENTENCES]
    if not sentences:
        return []
    flipped = [to_second_person(s) for s in sentences]
    pairs = [(_GENERAL_CUES[0], " ".join(flipped))]
    for sentence, answer in zip(sentences, flipped, strict=True):
        if cue := _cue_words(sentence):
            pairs.append((f"Remind me: {cue}…", answer))
        if match := _COPULA.match(sentence.rstrip(".!?")):
            _, thing, verb, _ = match.groups()
            pairs.append((f"What {verb.lower()} my {thing}?", answer))
            if rule == "restate-v2":
                named = thing.removesuffix("'s name").removesuffix("’s name")
                pairs += [(f"Tell me about my {named}.", answer), (f"Do you remember my {named}?", answer),
                          (f"What do you know about my {named}?", answer)]
        if rule == "restate-v1":
            pairs.append((_GENERAL_CUES[1], f"You told me that {_lower_first(answer)}"))
    return pairs


RULES = ("restate-v1", "restate-v2")


@dataclass(frozen=True)
class Lesson:
    id: str
    moment: str  # the curated thought it was derived for
    sources: tuple[str, ...]  # the events its text comes from: the moment and the perception that caused it
    pairs: tuple[tuple[str, str], ...]  # (cue, answer)

    @classmethod
    def of(cls, event: Any) -> Lesson:
        data = event.data
        return cls(str(event.id), data["moment"], tuple(data["sources"]), tuple(map(tuple, data["pairs"])))


def teach(journal: Journal, curation: Curation, run: str | None, rule: str) -> tuple[str, ...]:
    """The ids of the lessons of `curation`'s thoughts, in moment order: each thought whose
    perception (the person's words it answered) says something of the person gets one `lesson`
    event made by lesson rule `rule`, journaled on the lineage (in evolve run `run`) the first
    time the moment is curated and reused after (a rebuild, a retry, another rule), so the same
    moment always teaches the same rows. With `run` None nothing is journaled: only lessons already there count. Moments, perceptions
    and lessons that are redacted teach nothing."""
    redacted = set(curation.redacted)
    known = lessons(journal)
    moments = dict(zip(curation.event_ids, curation.types, strict=True))
    thoughts = {str(e.event.id): e.event for e in journal.read(since=curation.after_seq + 1, types=["thought"])
                if e.event is not None and e.seq <= curation.cut and moments.get(str(e.event.id)) == "thought"}
    causes = {str(t.causation_id) for t in thoughts.values() if t.causation_id}
    perceptions = {str(e.event.id): e.event for e in journal.read(types=["perception"])
                   if e.event is not None and str(e.event.id) in causes and e.seq <= curation.cut}
    taught = []
    for moment in curation.event_ids:
        thought = thoughts.get(moment)
        perception = perceptions.get(str(thought.causation_id)) if thought is not None else None
        if perception is None or perception.data.get("source", "user") != "user" \
                or {moment, str(perception.id)} & redacted:
            continue
        lesson = known.get(moment)
        if lesson is None and run is not None:
            pairs = restate(perception.prose, rule)
            if not pairs:
                continue
            answers = dict.fromkeys(answer for cue, answer in pairs if cue == "What do you know about me?")
            seq = record(journal, "lesson", " ".join(answers), run,
                         {"moment": moment, "sources": [moment, str(perception.id)], "rule": rule,
                          "pairs": [list(p) for p in pairs]})
            lesson = Lesson.of(next(journal.read(since=seq, limit=1)).event)
        if lesson is not None and not {lesson.id, *lesson.sources} & redacted:
            taught.append(lesson.id)
    return tuple(taught)


def relearned(journal: Journal, earlier: Iterable[str], redacted: Collection[str]) -> tuple[str, ...]:
    """Of `earlier` (ids of the lessons earlier generations were taught, in order), those still
    taught: neither the lesson nor its moment or perception redacted. With the config's
    `relearn`, a generation learns them again beside its own: at an equal number of training
    steps, later generations' deltas otherwise take the place of earlier ones' facts."""
    ids = list(dict.fromkeys(earlier))
    found = {lesson.id: lesson for lesson in lessons(journal, set(ids)).values()}
    return tuple(i for i in ids if i in found and not {i, *found[i].sources} & set(redacted))


def questions(taught: Iterable[Lesson]) -> list[tuple[str, tuple[str, ...]]]:
    """(cue, key words) to ask a generation whether it answers what `taught` taught with no
    memory: each cue that points at one statement ("Remind me: …", "What is my …?"), with the
    names and numbers of its answer as the words the reply must hold. Answers without any (a
    statement with no name or number) cannot be scored that way and are left out."""
    asked = []
    for lesson in taught:
        for cue, answer in lesson.pairs:
            if cue not in _GENERAL_CUES and (keys := key_words(answer)):
                asked.append((cue, keys))
    return asked


def key_words(answer: str) -> tuple[str, ...]:
    """The names and numbers of `answer`, lower-cased: its words with a digit, and its
    capitalised words after the first that are not the person ("Your sister's name is Oona." -> ("oona",))."""
    words = [w for w in _WORD.findall(answer) if w[:1].isalnum()]
    return tuple(dict.fromkeys(
        w.lower() for i, w in enumerate(words)
        if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper() and w.lower().replace("’", "'") not in _PEOPLE)))


def lessons(journal: Journal, ids: Collection[str] | None = None) -> dict[str, Lesson]:
    """The journaled lessons by the moment they teach (the first one journaled for a moment,
    whatever its rule: a generation taught by an older rule replays as it was), or only those
    whose ids are `ids`."""
    found: dict[str, Lesson] = {}
    for event in events(journal):
        if event.type == "lesson" and (ids is None or str(event.id) in ids):
            found.setdefault(event.data["moment"], Lesson.of(event))
    return found


def to_second_person(sentence: str) -> str:
    """`sentence` as the soul says it back: "I am allergic to hazelnuts." -> "You are allergic to hazelnuts."."""
    words = _WORD.findall(sentence)
    out, previous = [], ""
    for word in words:
        low = word.lower().replace("’", "'")
        new = _TO_SECOND.get(low) or (_AFTER_I[low] if previous == "i" and low in _AFTER_I else None)
        out.append(_same_case(word, new) if new else word)
        previous = low
    text = _join(out)
    return text[:1].upper() + text[1:]


def _speaks_of_self(sentence: str) -> bool:
    """A statement whose subject is the speaker: I, my, we or our among its first three words
    ("tell me about rivers" asks; it says nothing of the person)."""
    words = [w.lower().replace("’", "'") for w in _WORD.findall(sentence) if w[:1].isalnum()]
    return not sentence.rstrip().endswith("?") and any(w in _SUBJECTS for w in words[:3])


def _clean(sentence: str) -> str:
    return _LEAD_INS.sub("", " ".join(sentence.split()))


def _cue_words(sentence: str) -> str:
    """The words of `sentence` before its first name or number (a capitalised word after the
    first, or one with a digit), else its first half: what the person would remember asking about."""
    words = sentence.rstrip(".!?").split()
    cue = []
    for i, word in enumerate(words):
        if any(c.isdigit() for c in word) or (i > 0 and word[:1].isupper() and word.lower() not in _FIRST_PERSON):
            break
        cue.append(word)
    if len(cue) == len(words):
        cue = words[:len(words) // 2]
    return " ".join(cue) if 2 <= len(cue) < len(words) else ""


def _same_case(original: str, new: str) -> str:
    if original.isupper() and len(original) > 1:
        return new.upper()
    pronoun_i = original[:1] == "I" and original[1:2] in ("", "'", "’")  # capitalised wherever it stands
    return new[:1].upper() + new[1:] if original[:1].isupper() and not pronoun_i else new


def _join(words: list[str]) -> str:
    text = ""
    for word in words:
        text += word if not text or re.fullmatch(r"[^\w\s(\[]", word) else " " + word
    return text


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != "I " else text
