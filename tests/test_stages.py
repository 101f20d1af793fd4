"""filter, convert, pair and inspect on every real fixture file, through the same code the CLI runs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import make_params, write_params
from gymtrl.io import read_json, read_jsonl
from gymtrl.stages import convert, demo, filter as filter_stage, pair
from gymtrl.stages.common import StageError
from gymtrl.stages.pair import Entry, plan_pairs
from gymtrl.tools.inspect_rollouts import inspect_rollouts

FIX = "tests/fixtures/gym-0.4.0"


def params(**sections):
    """The repository's params, reading the fixture files."""
    return make_params(**{"data": {"rollouts": FIX}, **sections})


def digest(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_filter_counts_add_up_and_kept_lines_are_unchanged(workdir):
    m = filter_stage.run(params(paths={"filtered": "out/filtered"}))
    assert m == read_json("metrics/filter.json")
    assert m["lines_read"] == m["kept"] + m["dropped"] + m["invalid"] == 115
    assert (m["kept"], m["dropped_by_reason"], m["invalid_by_reason"]) == (
        56, {"duplicate": 1, "reward_below_min": 48}, {"no_response": 5, "not_json": 5})
    originals = {}
    for path in Path(FIX).glob("*.jsonl"):
        for n, raw in enumerate(path.read_bytes().splitlines(), 1):
            originals[(str(path), n)] = raw
    kept = Path("out/filtered/rollouts.jsonl").read_bytes().splitlines()
    index = list(read_jsonl("out/filtered/index.jsonl"))
    assert len(kept) == len(index) == 56
    for raw, entry in zip(kept, index):
        assert originals[(entry["source"], entry["line"])] == raw and entry["reward"] >= 0.8
    rejects = list(read_jsonl("out/filtered/rejects.jsonl"))
    assert len(rejects) == m["dropped"] + m["invalid"]
    tavily = [r for r in rejects if "tavily" in r["source"]]
    assert [(r["line"], r["bucket"], r["reason"]) for r in tavily] == [(n, "invalid", "not_json") for n in range(1, 6)]


def test_filter_turn_bounds_use_assistant_turns(workdir):
    m = filter_stage.run(params(filter={"min_reward": -100, "min_turns": 2, "max_turns": 3}, paths={"filtered": "f"}))
    assert m["dropped_by_reason"]["too_few_turns"] > 0 and m["dropped_by_reason"]["too_many_turns"] > 0
    for entry in read_jsonl("f/index.jsonl"):
        assert 2 <= entry["turns"] <= 3


def test_filter_says_why_nothing_survived(workdir):
    with pytest.raises(StageError) as err:
        filter_stage.run(params(filter={"min_reward": 5.0}, paths={"filtered": "f", "metrics": "m"}))
    msg = str(err.value)
    assert "read 115 lines from 23 file(s)" in msg and "rewards seen -1.0..1.0" in msg
    assert "filter.min_reward=5.0 removed 104" in msg
    assert not Path("f/rollouts.jsonl").exists() and not Path("m/filter.json").exists()  # no partial artifact


def test_convert_round_trips_through_datasets(workdir, tiny_model_dir):
    from datasets import load_dataset

    p = params(filter={"min_reward": -100}, paths={"filtered": "f", "base_model": str(tiny_model_dir), "sft": "sft"})
    filter_stage.run(p)
    m = convert.run(p)
    assert m["rows"] == 104 and m["template_error"] == 0 and m["arguments_format"] == "dict"
    from gymtrl.io import exact_json_decoding

    ds = load_dataset("parquet", data_files="sft/train.parquet", split="train")
    assert len(ds) == 104
    with exact_json_decoding():
        by_line = {(r["source"], r["line"]): r for r in ds}
    # Without the fix, datasets' own decoder may be off by one float ulp, but never turns values into nulls.
    plain = {(r["source"], r["line"]): r for r in ds}
    assert plain.keys() == by_line.keys()
    for k, row in by_line.items():
        assert approx_equal(plain[k]["messages"], row["messages"]) and approx_equal(plain[k]["tools"], row["tools"])
    # Nested tool arguments of mixed types come back exactly, not as nulls.
    from gymtrl.chat import format_messages
    from gymtrl.rollouts import parse_line, iter_lines
    from gymtrl.templates import probe_format
    from gymtrl.models import load_tokenizer

    fmt = probe_format(load_tokenizer(tiny_model_dir))
    checked = 0
    for path in sorted(Path(FIX).glob("*.jsonl")):
        for line in iter_lines(path):
            item = parse_line(line)
            if (str(path), line.lineno) in by_line and hasattr(item, "conversation"):
                row = by_line[(str(path), line.lineno)]
                assert row["messages"] == format_messages(item.conversation.messages, fmt)
                assert row["tools"] == item.conversation.tools
                checked += 1
    assert checked == 104
    assert any(isinstance(tc["function"]["arguments"], dict) and tc["function"]["arguments"]
               for r in ds for msg in r["messages"] for tc in msg.get("tool_calls", []))


def test_pair_strategies_on_constructed_groups():
    def e(key, reward, order):
        return Entry(key, reward, 0, 0, order + 1, order)

    entries = [e("a", 1.0, 0), e("a", 0.9, 1), e("a", 0.2, 2), e("b", 0.5, 3), e("c", 0.7, 4), e("c", 0.7, 5),
               e("d", 0.3, 6), e("d", 0.2, 7)]
    top2 = plan_pairs(entries, "top_vs_second", 0.1)
    assert [(c.order, r.order) for c, r in top2.pairs] == [(0, 1), (6, 7)]  # 0.9 - 0.8 style gaps count
    assert top2.stats["groups_single_rollout"] == 1 and top2.stats["groups_all_tied"] == 1
    assert [(c.order, r.order) for c, r in plan_pairs(entries, "top_vs_bottom", 0.5).pairs] == [(0, 2)]
    allp = plan_pairs(entries, "all_pairs", 0.1)
    assert [(c.order, r.order) for c, r in allp.pairs] == [(0, 1), (0, 2), (1, 2), (6, 7)]
    assert plan_pairs(entries, "all_pairs", 0.8).stats["below_min_diff"] == 3


def approx_equal(a, b) -> bool:
    """Equal, floats within a few ulps: the same JSON values however they were decoded."""
    import math

    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-15)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(approx_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(approx_equal(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


def test_approx_equal_tells_values_apart():
    assert approx_equal({"a": [0.7, 1]}, {"a": [0.7000000000000001, 1]})
    assert not approx_equal({"a": [0.7]}, {"a": [None]}) and not approx_equal([1], [1, 2])
    assert not approx_equal({"a": 1}, {"b": 1}) and not approx_equal(0.7, 0.71)


def test_pair_on_fixtures_and_demo_rollouts(workdir, tiny_model_dir):
    from datasets import load_dataset

    p = params(pair={"strategy": "all_pairs", "min_diff": 0.1}, paths={"base_model": str(tiny_model_dir)})
    filter_stage.run(p)
    m = pair.run(p)
    # blackjack's task 0 was dealt different hands: same task index, different prompts -> no pair.
    assert m["pairs"] == 0 and m["prompt_mismatch"] == 6 and m["groups_single_rollout"] == 94
    assert m["lines_read"] == m["rollouts"] + m["invalid"] + m["dropped_duplicates"] == 115
    p = make_params(paths={"base_model": str(tiny_model_dir), "pairs": "pairs2"})
    demo.run(p)
    filter_stage.run(p)
    m = pair.run(p)
    ds = load_dataset("parquet", data_files="pairs2/train.parquet", split="train")
    assert m["pairs"] == len(ds) > 0
    for row in ds:
        assert row["chosen_reward"] - row["rejected_reward"] >= 0.1 - 1e-9
        # the prompt is the task's, plus the turns both rollouts share (pair.cut: divergence)
        assert [x["role"] for x in row["prompt"]][:2] == ["system", "user"] and row["cut_at"] == len(row["prompt"])
        assert row["chosen"][0]["role"] == "assistant" and row["rejected"][0]["role"] == "assistant"
        assert row["tools"][0]["function"]["name"] == "calculator"


def test_inspect_cli_reports_every_fixture(workdir):
    write_params(Path("params.yaml"))
    out = subprocess.run([sys.executable, "-m", "gymtrl.cli", "inspect", FIX, "--json"], capture_output=True, check=True)
    s = orjson.loads(out.stdout)
    assert s["lines_read"] == 115 and s["rollouts"] == 104 and len(s["skipped_files"]) == 3
    assert sum(b["count"] for b in s["reward"]["histogram"]) == 104
    assert s["filter_would_keep"] == 56 and s["tasks"] == 96
    assert "tavily_search" in s["invalid_examples"]["not_json"]
    text = subprocess.run([sys.executable, "-m", "gymtrl.cli", "inspect", FIX],
                          capture_output=True, check=True, text=True).stdout
    assert "would keep 56" in text and "invalid not_json: 5" in text


def run_data_stages(tag: str, model_dir, workers: int | str = "auto") -> str:
    """filter, convert and pair on the fixtures into `<dir><tag>` folders; a digest of every output."""
    p = params(data={"rollouts": FIX, "workers": workers}, filter={"min_reward": 0.5}, pair={"strategy": "all_pairs"},
               paths={"filtered": f"f{tag}", "catalog": f"c{tag}", "sft": f"sft{tag}", "pairs": f"pairs{tag}",
                      "metrics": f"m{tag}", "plots": f"plots{tag}", "base_model": str(model_dir)})
    filter_stage.run(p)
    convert.run(p)
    pair.run(p)
    return digest(*(f"{d}{tag}/{name}" for d, name in (
        ("f", "rollouts.jsonl"), ("f", "index.jsonl"), ("f", "rejects.jsonl"), ("c", "rollouts.jsonl"),
        ("c", "catalog.json"), ("sft", "train.parquet"), ("sft", "rejects.jsonl"), ("pairs", "train.parquet"),
        ("m", "filter.json"), ("m", "convert.json"), ("m", "pair.json"))))


def test_reruns_are_byte_identical(workdir, tiny_model_dir):
    assert run_data_stages("", tiny_model_dir) == run_data_stages("", tiny_model_dir)


@pytest.mark.parametrize("entry", [["-m", "gymtrl.cli", "filter"], ["-m", "gymtrl.stages.filter"]])
def test_cli_reports_bad_params_without_a_traceback(workdir, entry):
    write_params(Path("params.yaml"), filter={"min_reward": "high"}, pair={"min_diff": -1})
    out = subprocess.run([sys.executable, *entry], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "filter.min_reward = 'high'" in out.stderr and "pair.min_diff = -1" in out.stderr
    assert "params.yaml" in out.stderr


def test_outputs_do_not_depend_on_the_worker_count(workdir, tiny_model_dir):
    """data.workers spreads lines over processes; every output must stay byte-identical."""
    runs = []
    for workers in (1, 2, 3):
        p = params(data={"rollouts": FIX, "workers": workers}, filter={"min_reward": 0.5},
                   pair={"strategy": "all_pairs"})
        runs.append((run_data_stages(str(workers), tiny_model_dir, workers), inspect_rollouts([FIX], p)))
    assert runs[0] == runs[1] == runs[2]


def test_pair_needs_the_catalog_of_exactly_its_input(workdir, tiny_model_dir):
    p = make_params(filter={"min_reward": 0.5}, paths={"base_model": str(tiny_model_dir)})
    demo.run(p)
    with pytest.raises(StageError, match="run the filter stage first"):
        pair.run(p)
    filter_stage.run(p)
    m = pair.run(p)
    assert m["pairs"] > 0 and m["lines_read"] == 480
    # Same file name, other content: the catalog no longer describes the input, and pair says so.
    lines = Path("data/demo/rollouts.jsonl").read_bytes().splitlines(keepends=True)
    Path("data/demo/rollouts.jsonl").write_bytes(b"".join(lines[: len(lines) // 2]))
    with pytest.raises(StageError, match="made from other rollouts .*: rerun the filter stage"):
        pair.run(p)
    filter_stage.run(p)
    half = pair.run(p)
    assert half["lines_read"] == len(lines) // 2 and 0 < half["pairs"] < m["pairs"]


@pytest.mark.parametrize("columns", ["SFT_COLUMNS", "PAIR_COLUMNS"])
def test_parquet_schema_is_the_one_datasets_writes(columns):
    """The stages build the Arrow schema themselves (no `datasets` import); it must be byte for byte
    what `datasets.Features` with Json / List(Json) gives, metadata included, or load_dataset would
    read the JSON columns differently."""
    from datasets import Features, Json, List, Value

    from gymtrl.io import arrow_schema

    cols = getattr(convert, columns, None) or getattr(pair, columns)
    kinds = {"json": Json(), "json_list": List(Json())}
    features = Features({name: kinds.get(kind) or Value(kind) for name, kind in cols.items()})
    assert arrow_schema(cols).equals(features.arrow_schema, check_metadata=True)


def test_stored_template_probe_is_used_only_while_the_template_is_unchanged(tmp_path, tiny_model_dir):
    import shutil

    from gymtrl.models import CHAT_FORMAT_FILE, chat_format, load_tokenizer, write_chat_format
    from gymtrl.templates import probe_format

    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    tok = load_tokenizer(d)
    write_chat_format(tok, d)
    assert chat_format(d) == probe_format(tok) and chat_format(d, arguments="string").arguments == "string"
    stored = orjson.loads((d / CHAT_FORMAT_FILE).read_bytes())
    assert stored["stop_tokens"] == ["<|im_end|>"]
    (d / CHAT_FORMAT_FILE).write_bytes(orjson.dumps({**stored, "format": {**stored["format"], "reasoning": "think"}}))
    assert chat_format(d).reasoning == "think"  # the stored answer is what is read...
    (d / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    changed = chat_format(d)  # ...until the template changes: then it is probed again
    assert changed == probe_format(load_tokenizer(d)) and changed.arguments == "string" != stored["format"]["arguments"]


def test_pairs_from_gzip_input_equal_those_from_the_plain_file(workdir, tiny_model_dir):
    """.jsonl.gz cannot seek: pair copies the lines it uses to a plain spool file first."""
    import gzip

    from datasets import load_dataset

    demo.run(make_params())
    Path("gz").mkdir()
    Path("gz/rollouts.jsonl.gz").write_bytes(gzip.compress(Path("data/demo/rollouts.jsonl").read_bytes()))
    runs = {}
    for name, src in (("plain", "data/demo/rollouts.jsonl"), ("gz", "gz/rollouts.jsonl.gz")):
        p = make_params(data={"rollouts": src, "workers": 2}, pair={"strategy": "all_pairs"},
                        paths={"base_model": str(tiny_model_dir), "catalog": f"cat_{name}", "filtered": f"f_{name}",
                               "pairs": f"pairs_{name}"})
        filter_stage.run(p)
        m = pair.run(p)
        ds = load_dataset("parquet", data_files=f"pairs_{name}/train.parquet", split="train")
        runs[name] = (m, [{k: v for k, v in r.items() if not k.endswith("_source")} for r in ds])
    assert runs["plain"] == runs["gz"] and runs["gz"][0]["pairs"] > 20
    assert not list(Path(".").glob(".gymtrl-pair-spool-*"))


def test_workers_also_work_when_started_by_spawn(workdir, tiny_model_dir, monkeypatch):
    """Linux forks the workers; macOS and Windows spawn them, which pickles each stage's worker context
    (tokenizer, chat format, filter params). Same outputs either way."""
    import multiprocessing

    from gymtrl import parallel

    forked = run_data_stages("fork", tiny_model_dir, workers=2)
    monkeypatch.setattr(parallel, "_pool_context", lambda: multiprocessing.get_context("spawn"))
    assert run_data_stages("spawn", tiny_model_dir, workers=2) == forked


def test_batched_render_check_finds_exactly_the_rows_a_template_rejects(tiny_model_dir):
    """convert renders rows sharing tools in one call; a failing batch is re-rendered row by row, so
    the texts and errors are the same as rendering every row alone."""
    from gymtrl.chat import ChatFormat
    from gymtrl.models import load_chat_tokenizer
    from gymtrl.stages.convert import render_rows
    from gymtrl.templates import render

    tok = load_chat_tokenizer(tiny_model_dir)
    tok.chat_template = ("{% for m in messages %}{% if m['content'] == 'boom' %}{{ raise_exception('no boom') }}"
                         "{% endif %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if tools %}{{ tools | length }} tools{% endif %}")
    calc = [{"type": "function", "function": {"name": "calculator", "parameters": {"type": "object"}}}]
    rows = [{"messages": [{"role": "user", "content": text}], "tools": tools}
            for text, tools in [("a", calc), ("b", calc), ("boom", calc), ("c", calc), ("d", []), ("boom", []),
                                ("e", calc)]]
    fmt = ChatFormat()

    def alone(row):
        try:
            return render(tok, row["messages"], row["tools"], fmt)
        except Exception as err:
            return f"error: {err}"

    expected = [alone(r) for r in rows]
    assert [i for i, e in enumerate(expected) if e.startswith("error")] == [2, 5] and "no boom" in expected[2]
    assert expected[0] == "user: a\n1 tools" and expected[4] == "user: d\n"
    for batch in (1, 2, 3, 64):
        got = [t if isinstance(t, str) else f"error: {t}" for t in render_rows(tok, rows, fmt, batch)]
        assert got == expected
