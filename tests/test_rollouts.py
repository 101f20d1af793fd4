"""The reader on the real Gym 0.4.0 fixture files and on every irregularity GYM_FORMAT.md lists."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter

import orjson
import pytest

from conftest import FIXTURES, fixture
from gymtrl.rollouts import Line, Rejected, Rollout, parse_line, resolve_sources, scan, side_file_reason


def _line(obj_or_bytes, lineno=1) -> Line:
    raw = obj_or_bytes if isinstance(obj_or_bytes, bytes) else orjson.dumps(obj_or_bytes)
    return Line("mem.jsonl", lineno, 0, raw)


def _good() -> dict:
    return orjson.loads(fixture("example_single_tool_call").read_bytes().splitlines()[0])


def test_every_fixture_line_lands_in_exactly_one_bucket():
    sources = resolve_sources([str(FIXTURES)])
    assert len(sources.files) + len(sources.skipped) == len(list(FIXTURES.glob("*.jsonl")))
    total_lines = sum(len(p.read_bytes().splitlines()) for p in sources.files)
    buckets = Counter()
    for item in scan(sources.files):
        buckets["rollout" if isinstance(item, Rollout) else f"{item.bucket}:{item.reason}"] += 1
    assert sum(buckets.values()) == total_lines
    assert buckets == {"rollout": 104, "invalid:no_response": 5, "invalid:not_json": 5, "dropped:duplicate": 1}


def test_side_files_are_recognised_not_read():
    sources = resolve_sources([str(FIXTURES)])
    skipped = {p.split("/")[-1] for p in sources.skipped}
    assert skipped == {
        "resources_servers__blackjack__example_rollouts_materialized_inputs.jsonl",
        "resources_servers__ether0__example_rollouts_reward_profiling.jsonl",
        "resources_servers__example_multi_turn_gymnasium__example_rollouts_materialized_inputs.jsonl",
    }
    assert "metrics" in side_file_reason(FIXTURES / "x_aggregate_metrics.json")
    assert "failed" in side_file_reason(FIXTURES / "x_failures.jsonl")


def test_placeholder_rows_and_inputs_only_lines_are_invalid_with_line_numbers():
    items = list(scan([fixture("tavily_search"), fixture("genrm_compare")]))
    assert [(i.reason, i.line.lineno) for i in items] == [("not_json", n) for n in range(1, 6)] + [
        ("no_response", n) for n in range(1, 6)
    ]


def test_repeated_identical_lines_are_dropped_as_duplicates():
    items = list(scan([fixture("graphwalks")]))
    dups = [i for i in items if isinstance(i, Rejected)]
    assert [(d.bucket, d.reason) for d in dups] == [("dropped", "duplicate")]


@pytest.mark.parametrize(
    "reward, reason",
    [(None, "reward_missing"), ("1.0", "reward_not_numeric"), (True, "reward_not_numeric"), ([1], "reward_not_numeric")],
)
def test_bad_rewards_are_never_taken_as_zero(reward, reason):
    rec = _good()
    rec["reward"] = reward
    assert parse_line(_line(rec)).reason == reason
    del rec["reward"]
    assert parse_line(_line(rec)).reason == "reward_missing"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_rewards_written_by_python_json_are_named(literal):
    raw = orjson.dumps(_good()).replace(b'"reward":1.0', b'"reward":' + literal)
    assert b'"reward":' + literal in raw
    assert parse_line(_line(raw)).reason == "reward_not_finite"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "blank_line"),
        (b'{"response": {"output": [', "not_json"),
        (b"\xff\xfe{}", "not_json"),
        (b"[1, 2]", "not_object"),
        (b'{"reward": 1}', "no_response"),
    ],
)
def test_unreadable_lines(raw, reason):
    assert parse_line(_line(raw)).reason == reason


def test_structural_problems_are_invalid_with_a_reason():
    rec = _good()
    rec["response"]["output"] = {"not": "a list"}
    assert parse_line(_line(rec)).reason == "output_not_list"
    rec = _good()
    rec["response"]["output"].append({"type": "function_call_output", "call_id": "nobody", "output": "x"})
    assert parse_line(_line(rec)).reason == "orphan_tool_output"
    rec = _good()
    rec["response"]["output"].append({"type": "web_search_call"})
    assert parse_line(_line(rec)).reason == "unsupported_item"
    rec = _good()
    rec["response"]["output"].append({"type": "function_call", "name": "f", "arguments": "{oops", "call_id": "c"})
    assert parse_line(_line(rec)).reason == "arguments_not_json"
    rec = _good()
    rec["response"]["output"].append({"type": "function_call", "name": "f", "arguments": "{}"})
    assert parse_line(_line(rec)).reason == "call_id_missing"
    rec = _good()
    rec["responses_create_params"]["input"][1]["content"] = [{"type": "input_image", "image_url": "x"}]
    assert parse_line(_line(rec)).reason == "unsupported_content"


def test_unanswered_final_tool_call_is_kept_and_counted():
    rec = _good()
    rec["response"]["output"].append({"type": "function_call", "name": "get_weather", "arguments": "{}", "call_id": "c9"})
    item = parse_line(_line(rec))
    assert isinstance(item, Rollout)
    assert item.conversation.unanswered_calls == 1
    assert item.conversation.messages[-1]["tool_calls"][0]["id"] == "c9"


def test_gzip_files_read_like_plain_ones(tmp_path):
    src = fixture("example_multi_step")
    gz = tmp_path / src.name.replace(".jsonl", ".jsonl.gz")
    with open(src, "rb") as f, gzip.open(gz, "wb") as g:
        shutil.copyfileobj(f, g)
    plain = [(i.task_key, i.reward, i.conversation.messages) for i in scan([src])]
    packed = [(i.task_key, i.reward, i.conversation.messages) for i in scan([gz])]
    assert plain == packed and len(plain) == 5


def test_task_keys_use_gym_indices_else_a_stable_content_hash():
    blackjack = [i.task_key for i in scan([fixture("blackjack")])]
    assert set(blackjack) == {"blackjack_gymnasium_agent#0"}
    # No _ng_task_index: sha256 of the canonical prompt. Fixed value = identical on every machine.
    first = next(iter(scan([fixture("example_single_tool_call")])))
    assert first.task_key == "sha256:45d10d764d32c63e8cc9b78456cdff32"
    # aviary's inputs are empty (the task is in the output): keys must still tell its tasks apart.
    assert len({i.task_key for i in scan([fixture("aviary")])}) == 5


def test_globs_and_missing_paths(tmp_path):
    assert len(resolve_sources([str(FIXTURES / "*xlam*")]).files) == 1
    with pytest.raises(FileNotFoundError, match="matches no file"):
        resolve_sources([str(tmp_path / "nope*.jsonl")])


def test_old_and_new_gym_versions_still_read():
    rec = _good()
    for key in [k for k in rec if k.startswith("_ng_")]:
        del rec[key]
    rec["some_future_field"] = {"nested": [1, "x"]}
    rec["response"]["some_future_field"] = 3
    assert isinstance(parse_line(_line(rec)), Rollout)


def test_byte_ranges_split_lines_exactly_like_iter_lines(tmp_path):
    """Workers read byte ranges themselves; together they must see the lines, offsets and bytes that
    `iter_lines` sees: CRLF, blank lines and a last line without a newline included."""
    from gymtrl.chunks import line_ranges, read_range
    from gymtrl.rollouts import iter_lines

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\n{"b": 22}\n\r\n{"c": "x\\ny"}\n{"d": 4}')
    expected = [(line.offset, line.raw) for line in iter_lines(path)]
    for chunk in range(1, 40):
        got = [pair for start, end in line_ranges(path, chunk) for pair in read_range(str(path), start, end)]
        assert got == expected, chunk


@pytest.mark.parametrize("workers", [1, 2])
def test_catalog_scan_gives_the_readers_verdicts_line_for_line(tmp_path, monkeypatch, workers):
    """The stages use `catalog.scan` (parallel, compact); it must say what `rollouts.scan` says about
    every line, for plain and gzip files, with jobs small enough that files split into many of them."""
    from gymtrl import catalog

    files = resolve_sources([str(FIXTURES)]).files
    gz = tmp_path / "copy.jsonl.gz"
    gz.write_bytes(gzip.compress(files[0].read_bytes()))
    files = [*files, gz]

    def key(item):
        base = (item.line.source, item.line.lineno, item.line.offset)
        if isinstance(item, Rejected):
            return (*base, item.bucket, item.reason, item.detail)
        return (*base, item.reward, item.task_key, item.turns)

    expected = [key(item) for item in scan(files)]
    original = catalog.file_jobs
    monkeypatch.setattr(catalog, "file_jobs", lambda fs: original(fs, chunk_bytes=3000))
    got = [key(item) for item in catalog.scan(files, merge_system=True, workers=workers)]
    assert got == expected and len(got) > 115
