"""Property tests: real fixture lines, mutated at every level, never crash the reader.

Each generated line lands in exactly one bucket with a reason; counts of a whole mutated file add up.
"""

from __future__ import annotations

import copy
import math

import orjson
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import FIXTURES
from gymtrl.rollouts import Line, Rejected, Rollout, parse_line

SEEDS = [raw for p in sorted(FIXTURES.glob("*.jsonl")) for raw in p.read_bytes().splitlines() if raw.startswith(b"{")]
RECORDS = [orjson.loads(r) for r in SEEDS]

WEIRD = st.sampled_from([None, "", "x", "1.0", 0, -1, 1e308, True, [], {}, [[]], [{}], {"type": None},
                         {"type": "function_call"}, {"type": "function_call_output", "call_id": "nope"},
                         {"type": "message", "role": "wizard", "content": 3}, {"type": "reasoning", "summary": 5},
                         [{"type": "input_image"}], "{not json", float("nan"), float("inf"), -float("inf"),
                         "\u0000"])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(record, path, op, value):
    if not path:
        return value
    parent = record
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if op == "delete":
        del parent[key]
    elif op == "set":
        parent[key] = value
    else:  # wrap in a list, a level deeper than expected
        parent[key] = [parent[key]]
    return record


def _encode(record) -> bytes:
    try:
        return orjson.dumps(record)
    except TypeError:
        return b"{}"
    except orjson.JSONEncodeError:  # NaN / inf are written the way Python's json module writes them
        import json

        return json.dumps(record).encode()


@st.composite
def mutated_lines(draw) -> bytes:
    i = draw(st.integers(0, len(RECORDS) - 1))
    record = orjson.loads(SEEDS[i])
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(record))
        path = paths[draw(st.integers(0, len(paths) - 1))]
        # deepcopy: a drawn {} or [] must not be shared (and mutated) across generated cases
        record = _mutate(record, path, draw(st.sampled_from(["set", "delete", "wrap"])), copy.deepcopy(draw(WEIRD)))
        if not isinstance(record, (dict, list)):
            break
    raw = _encode(record)
    cut = draw(st.sampled_from(["none", "none", "truncate", "garbage", "utf8"]))
    if cut == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif cut == "garbage":
        raw = raw + b"\x00}{"
    elif cut == "utf8":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + b"\xff\xfe" + raw[at:]
    return raw.replace(b"\n", b" ")


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck), database=None,
          derandomize=True)
@given(mutated_lines())
def test_any_mutation_lands_in_exactly_one_bucket(raw):
    item = parse_line(Line("fuzz.jsonl", 7, 0, raw))
    assert isinstance(item, (Rollout, Rejected))
    if isinstance(item, Rejected):
        assert item.bucket == "invalid" and item.reason and item.line.lineno == 7
        assert item.reason != "unexpected_shape", item.detail  # the safety net must not be what catches it
    else:
        assert math.isfinite(item.reward)
        assert all(m["role"] in ("system", "developer", "user", "assistant", "tool") for m in item.conversation.messages)
        orjson.dumps(item.conversation.messages)  # what convert writes must serialise


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(st.lists(mutated_lines(), min_size=300, max_size=300))
def test_a_file_of_mutations_adds_up(tmp_path_factory, lines):
    from conftest import make_params
    from gymtrl.stages import filter as filter_stage

    tmp_path = tmp_path_factory.mktemp("fuzzfile")
    lines = lines + [b"", b"not json at all", b"\xff" * 10, b"{}" * 3, b"[" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000]
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "mutated.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "in" / "empty.jsonl").write_bytes(b"")
    paths = {"filtered": str(tmp_path / "out"), "catalog": str(tmp_path / "catalog"), "metrics": str(tmp_path / "m"),
             "plots": str(tmp_path / "m")}
    m = filter_stage.run(make_params(data={"rollouts": str(tmp_path / "in")}, filter={"min_reward": -1e9}, paths=paths))
    assert m["lines_read"] == len(lines) == m["kept"] + m["dropped"] + m["invalid"]
    rejects = (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()
    assert len(rejects) == m["dropped"] + m["invalid"]


def test_a_file_that_is_not_jsonl_at_all(tmp_path):
    from gymtrl.rollouts import scan

    binary = tmp_path / "image.jsonl"
    binary.write_bytes(bytes(range(256)) * 40)
    items = list(scan([binary]))
    assert items and all(isinstance(i, Rejected) and i.bucket == "invalid" for i in items)
