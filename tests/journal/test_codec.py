"""The bifocal codec: everything that can be an event round-trips to an equal event."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from journal import codec
from journal.event import CATALOGUE, BifocalEvent, Embedder, EventError

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def events(draw: st.DrawFn) -> BifocalEvent:
    dim = draw(st.integers(min_value=0, max_value=1024))
    vector = draw(
        st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=dim, max_size=dim)
    )
    return BifocalEvent(
        type=draw(st.sampled_from(sorted(CATALOGUE))),
        prose=draw(st.text()),
        vector=vector,
        embedder=Embedder(draw(st.text(min_size=1, max_size=30)), dim),
        originator_id=draw(st.uuids() | st.text(min_size=1, max_size=40)),
        originator_version=draw(st.integers(min_value=0, max_value=2**63 - 1)),
        id=draw(st.uuids()),
        timestamp=draw(st.datetimes(timezones=st.timezones())),
        causation_id=draw(st.none() | st.uuids()),
        correlation_id=draw(st.none() | st.uuids()),
        corpus=draw(st.none() | st.text(max_size=20)),
        data=draw(st.dictionaries(st.text(max_size=10), json_values, max_size=5)),
    )


@settings(max_examples=300, deadline=None)
@given(events())
def test_any_event_round_trips(event: BifocalEvent) -> None:
    payload = codec.encode(event)
    decoded = codec.decode(payload, event.originator_id, event.originator_version)
    assert decoded == event
    assert codec.encode(decoded) == payload  # and to the same bytes: determinism


@settings(max_examples=100, deadline=None)
@given(events())
def test_vector_is_compact_binary(event: BifocalEvent) -> None:
    payload = codec.encode(event)
    assert payload.endswith(event.vector.tobytes())
    header, _ = codec.split(payload)
    assert "vector" not in header


def test_timestamps_are_kept_in_utc_to_the_microsecond() -> None:
    event = BifocalEvent("thought", "t", [], timestamp=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc))
    decoded = codec.decode(codec.encode(event), event.originator_id, 1)
    assert decoded.timestamp.microsecond == 678901 and decoded.timestamp.tzinfo == timezone.utc


def test_empty_prose_and_empty_vector() -> None:
    event = BifocalEvent("perception", "", [])
    assert codec.decode(codec.encode(event), event.originator_id, 1) == event


def test_dimension_mismatch_is_refused() -> None:
    with pytest.raises(EventError, match="3 dimensions but embedder minilm declares 384"):
        BifocalEvent("perception", "x", [0.1, 0.2, 0.3], Embedder("minilm", 384))


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [1e39]])
def test_non_finite_vectors_are_refused(bad: list[float]) -> None:
    with pytest.raises(EventError, match="NaN or infinite"):
        BifocalEvent("perception", "x", bad, Embedder("e", 1))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": float("nan")}, "non-finite"),
        ({"x": 2**64}, "beyond 64 bits"),
        ({"x": (1, 2)}, "holds a tuple"),
        ({"x": {1: "a"}}, "non-text key"),
        ({"x": "\ud800"}, "not valid unicode"),
    ],
)
def test_data_that_json_would_lose_is_refused(data: dict, message: str) -> None:
    with pytest.raises(EventError, match=message):
        BifocalEvent("thought", "x", [], data=data)


def test_unknown_type_is_refused_on_write() -> None:
    with pytest.raises(EventError, match="unknown event type 'dream'"):
        BifocalEvent("dream", "x", [])


def test_vector_is_read_only() -> None:
    event = BifocalEvent("perception", "x", np.ones(3), Embedder("e", 3))
    with pytest.raises(ValueError):
        event.vector[0] = 2.0


def _header_payload(**changes: object) -> bytes:
    event = BifocalEvent("perception", "x", [1.0], Embedder("e", 1))
    header, vector = codec.split(codec.encode(event))
    header.update(changes)
    head = codec.orjson.dumps(header)
    return codec._PREFIX.pack(codec.MAGIC, codec.FORMAT, len(head)) + head + vector.tobytes()


def test_unknown_version_is_reported_not_guessed() -> None:
    with pytest.raises(codec.UnknownEvent, match="newer than this soul knows"):
        codec.decode(_header_payload(schema=99), uuid.uuid4(), 1)
    with pytest.raises(codec.UnknownEvent, match="unknown event type 'dream'"):
        codec.decode(_header_payload(type="dream"), uuid.uuid4(), 1)


def test_old_versions_are_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CATALOGUE, "perception", 2)

    def v1_to_v2(header: dict) -> dict:
        return {**header, "data": {**header["data"], "source": header["data"].get("source", "user")}}

    monkeypatch.setitem(codec.UPCASTERS, ("perception", 1), v1_to_v2)
    event = codec.decode(_header_payload(schema=1), uuid.uuid4(), 1)
    assert event.schema == 2 and event.data["source"] == "user"


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "too short"),
        (b"garbage that is long enough", "bad magic"),
        (codec._PREFIX.pack(codec.MAGIC, 9, 0), "format 9"),
        (codec._PREFIX.pack(codec.MAGIC, 1, 3) + b"{x}", "not JSON"),
    ],
)
def test_garbage_is_a_decode_error(payload: bytes, message: str) -> None:
    with pytest.raises(codec.DecodeError, match=message):
        codec.decode(payload, uuid.uuid4(), 1)


def test_truncated_vector_is_a_decode_error() -> None:
    payload = codec.encode(BifocalEvent("perception", "x", [1.0, 2.0], Embedder("e", 2)))
    with pytest.raises(codec.DecodeError, match="declares 2 dimensions"):
        codec.decode(payload[:-3], uuid.uuid4(), 1)
