"""Real chat templates of many model families, on every Gym fixture rollout.

For each family (../shared/chat-templates when present, and every text-model template the installed TRL
ships), a tiny tokenizer is built from SmolLM2's vocabulary + the family's control tokens + its template
(families.py). Then: every fixture rollout is converted with nothing lost or rejected with a reason,
the native template is kept whenever it renders tool calls and results, the assistant-only mask holds
exactly the assistant's tokens, each turn is trained after exactly the prompt an evaluator renders,
and one real training step runs.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from families import Family, build_tokenizer, shared_families, trl_families  # noqa: E402

from gymtrl.chat import format_messages  # noqa: E402
from gymtrl.faithful import TemplateMismatch, lost_pieces, pieces, tokenize_sample, training_samples  # noqa: E402
from gymtrl.rollouts import Rejected, iter_lines, parse_line  # noqa: E402
from gymtrl.templates import TOOL_CHATML_TEMPLATE, probe_format, render, stop_tokens, supports_tools  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "gym-0.4.0"
RECORDED = Path(__file__).parents[1] / "benchmarks" / "families.json"
SHAPES = [f"resources_servers__{n}__example_rollouts.jsonl" for n in (
    "aviary", "blackjack", "example_multi_turn_gymnasium", "xlam_fc", "math_with_code", "example_multi_step",
    "example_mcp_weather")] + ["responses_api_agents__hermes_agent__example_math_rollouts.jsonl"]
FAMILIES = shared_families() + trl_families()
IDS = [f.name for f in FAMILIES]


@pytest.fixture(scope="module")
def fixture_rollouts():
    rows = []
    for f in sorted(FIXTURES.glob("*_rollouts.jsonl")):
        for line in iter_lines(f):
            item = parse_line(line)
            if not isinstance(item, Rejected):
                rows.append(item)
    assert len(rows) == 105  # 115 lines, 10 invalid (see test_rollouts)
    return rows


def family_tokenizer(family: Family, base):
    """As base_model prepares it: the family's own template, or the fallback where it shows no tool calls."""
    from gymtrl.models import ensure_tool_template

    tok = build_tokenizer(family, base)
    ensure_tool_template(tok)
    return tok


def test_families_are_found():
    names = set(IDS)
    assert {"trl:llama3_1", "trl:qwen3", "trl:gptoss", "trl:deepseekv3", "trl:nemotron_3_nano"} <= names
    if Path(__file__).resolve().parents[2].joinpath("shared", "chat-templates").is_dir():
        assert len(shared_families()) == 9


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_every_rollout_converted_faithfully_or_rejected(family, base_tokenizer, fixture_rollouts):
    """The convert check, per row: kept rows lose nothing (in the texts training uses), rejected rows say why."""
    from gymtrl.stages.convert import RowContext, convert_rollout

    tok = family_tokenizer(family, base_tokenizer)
    native = build_tokenizer(family, base_tokenizer)
    # The native template is kept whenever it renders tool calls and tool results.
    assert (tok.chat_template == TOOL_CHATML_TEMPLATE) == (not supports_tools(native))
    fmt = probe_format(tok)
    ctx = RowContext(tok, fmt, True, "reject")
    reasons: Counter = Counter()
    for item in fixture_rollouts:
        row, verdict = convert_rollout(ctx, item)
        if verdict.rejected:
            bucket, reason, detail = verdict.rejected
            assert reason in ("content_lost", "template_error", "template_mismatch") and detail
            reasons[reason] += 1
            continue
        assert verdict.stats.lost == {}
        samples = training_samples(tok, row["messages"], row["tools"], fmt)
        assert not lost_pieces([s.text for s in samples], pieces(item.conversation, fmt))
    # The README's families table (benchmarks/families.py -> families.json) is what the code does.
    recorded = {r["family"]: r for r in json.loads(RECORDED.read_text())}.get(family.name)
    if recorded is not None:
        assert len(fixture_rollouts) - sum(reasons.values()) == recorded["kept"]
        assert dict(reasons) == recorded["rejected"]
    assert sum(reasons.values()) <= 0.3 * len(fixture_rollouts), (family.name, dict(reasons))


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_each_turn_trains_after_the_prompt_inference_renders(family, base_tokenizer, fixture_rollouts):
    """Train text = inference text: before every trained assistant span stands exactly the prompt the
    evaluator (or a server) renders for that turn, and the span is what the model must produce."""
    tok = family_tokenizer(family, base_tokenizer)
    fmt = probe_format(tok)
    checked = 0
    for item in fixture_rollouts:
        messages = format_messages(item.conversation.messages, fmt)
        try:
            samples = training_samples(tok, messages, item.conversation.tools, fmt)
        except (TemplateMismatch, Exception):  # rows convert rejects
            continue
        spans = sorted((s.spans[k][0], n, k) for n, s in enumerate(samples) for k in range(len(s.spans)))
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i > 0]
        assert len(spans) == len(turns)  # every assistant turn is trained exactly once
        tools = item.conversation.tools
        for n, s in enumerate(samples):
            for start, end in s.spans:
                prompt = s.text[:start]
                # The inference prompt, whole, or up to a prefill the template writes for the model
                # (`<think>\n`) where this turn has no reasoning: never more, never other text.
                i = next(i for i in turns
                         if render(tok, messages[:i], tools, fmt, add_generation_prompt=True).startswith(prompt)
                         and len(prompt) >= len(render(tok, messages[:i], tools, fmt)))
                assert s.text[start:end].strip()
                checked += 1
                turns.remove(i)
        assert not turns
    assert checked >= 100  # turns of the rows a family keeps (194 with every row, 116 for the fewest)


def _assistant_texts(tok, sample, mask_row):
    ids, mask = mask_row["input_ids"], mask_row["assistant_masks"]
    runs, current = [], []
    for t, m in zip(ids, mask):
        if m:
            current.append(t)
        elif current:
            runs.append(tok.decode(current, skip_special_tokens=False))
            current = []
    if current:
        runs.append(tok.decode(current, skip_special_tokens=False))
    return runs


MASK_FAMILIES = ["Qwen3-0.6B", "Llama-3.1-8B-Instruct", "Mistral-Nemo-Instruct-2407", "gpt-oss-120b",
                 "trl:qwen3", "trl:llama3_1", "trl:gptoss", "trl:deepseekv3", "trl:nemotron_3_nano", "trl:gemma4_v5",
                 "trl:phi3"]  # phi3 shows no tool calls: the fallback template


@pytest.mark.parametrize("name", MASK_FAMILIES)
def test_mask_is_exactly_the_assistant_tokens(name, base_tokenizer, fixture_rollouts):
    """Token by token on a multi-turn tool rollout: trained runs are the assistant's turns, each ending
    with the template's end-of-turn token; no tool output or prompt token is trained."""
    family = next((f for f in FAMILIES if f.name == name), None)
    if family is None:
        pytest.skip(f"{name}: ../shared/chat-templates is not beside this checkout")
    tok = family_tokenizer(family, base_tokenizer)
    fmt = probe_format(tok)
    stops = set(stop_tokens(tok))
    multi_tool = [r for r in fixture_rollouts if sum(m["role"] == "tool" for m in r.conversation.messages) >= 2]
    for item in multi_tool:  # the first multi-turn tool rollout this family's template takes
        messages = format_messages(item.conversation.messages, fmt)
        try:
            samples = training_samples(tok, messages, item.conversation.tools, fmt)
        except Exception:
            continue
        if not lost_pieces([s.text for s in samples], pieces(item.conversation, fmt)):
            break
    else:
        pytest.fail(f"{name}: no multi-turn tool rollout converts")
    said = " ".join(str(m) for m in messages if m["role"] == "assistant")  # an assistant may quote a result
    outputs = [m["content"] for m in messages if m["role"] == "tool" and len(m["content"]) > 3 and m["content"] not in said]
    trained_turns = 0
    for sample in samples:
        row = tokenize_sample(tok, sample)
        runs = _assistant_texts(tok, sample, row)
        assert len(runs) == len(sample.spans)
        for run, (start, end) in zip(runs, sample.spans):
            assert run.strip() == sample.text[start:end].strip()  # whole tokens, nothing more
            assert any(run.rstrip().endswith(s) for s in stops), (run[-40:], stops)  # learns to stop
            for out in outputs:
                assert out not in run  # environment text is context only
            trained_turns += 1
        # Everything outside the spans is masked: the untrained tokens decode to the rest of the text.
        untrained = tok.decode([t for t, m in zip(row["input_ids"], row["assistant_masks"]) if not m],
                               skip_special_tokens=False)
        assert item.conversation.messages[1]["content"].strip()[:40] in untrained
    assert trained_turns == sum(1 for m in messages[1:] if m["role"] == "assistant")


def test_mask_equals_trl_generation_markers_on_the_default_template(embedded_tokenizer, fixture_rollouts):
    """Where TRL can mask (a template with {% generation %}: ours), its mask and ours are the same tokens."""
    fmt = probe_format(embedded_tokenizer)
    compared = 0
    for item in fixture_rollouts[::3]:
        messages = format_messages(item.conversation.messages, fmt)
        (sample,) = training_samples(embedded_tokenizer, messages, item.conversation.tools, fmt)
        ours = tokenize_sample(embedded_tokenizer, sample)
        theirs = embedded_tokenizer.apply_chat_template(messages, tools=fmt.tools_arg(item.conversation.tools),
                                                        tokenize=True, return_dict=True,
                                                        return_assistant_tokens_mask=True)
        assert ours["input_ids"] == list(theirs["input_ids"])
        assert ours["assistant_masks"] == list(theirs["assistant_masks"])
        compared += 1
    assert compared == 35


def test_fallback_ends_turns_with_the_models_own_eos(base_tokenizer):
    """A model whose template cannot show tool calls gets the fallback, whose assistant turns end with
    that model's eos (here `</s>`), which is also what generation stops on."""
    from gymtrl.models import ensure_tool_template, stop_token_ids

    plain = Family("plain", "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
                   special=("<s>", "</s>"), eos="</s>", bos="<s>")
    tok = build_tokenizer(plain, base_tokenizer)
    assert ensure_tool_template(tok)
    fmt = probe_format(tok)
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    text = render(tok, messages, None, fmt)
    assert "a</s>" in text and "<|im_end|>" not in text.split("assistant\n")[-1]
    assert stop_token_ids(tok)[0] == tok.convert_tokens_to_ids("</s>")


@pytest.fixture(scope="module")
def filtered_fixtures(tmp_path_factory):
    """filter's output on the fixture files with every shape that templates treat differently (parallel
    calls, environment turns, reasoning and text beside calls, calls without tool definitions), every
    valid rollout kept; the other files go through convert's check in the test above, for every family."""
    import shutil

    from conftest import make_params
    from gymtrl.stages import filter as filter_stage

    d = tmp_path_factory.mktemp("filtered")
    (d / "in").mkdir()
    for name in SHAPES:
        shutil.copy(FIXTURES / name, d / "in" / name)
    p = make_params(data={"rollouts": str(d / "in"), "workers": 1}, filter={"min_reward": -1e9},
                    paths={"filtered": str(d / "filtered"), "catalog": str(d / "catalog"), "metrics": str(d),
                           "plots": str(d)})
    filter_stage.run(p)
    return d / "filtered"


def _tiny_model_dir(tok, d: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gymtrl.io import write_json
    from gymtrl.models import write_chat_format

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    write_chat_format(tok, d)
    write_json(d / "base_info.json", {"source": "tiny"})
    return d


@pytest.mark.parametrize("family", FAMILIES, ids=IDS)
def test_convert_and_one_training_step(family, base_tokenizer, filtered_fixtures, tmp_path):
    """The real stages per family: convert every fixture rollout, then train a step with
    assistant_only_loss: true (which TRL alone refuses for templates it does not know)."""
    from conftest import make_params
    from gymtrl.io import read_json
    from gymtrl.stages import convert, train

    tok = family_tokenizer(family, base_tokenizer)
    model_dir = _tiny_model_dir(tok, tmp_path / "base")
    p = make_params(data={"workers": 1}, train={"max_examples": 6, "sft": {
        "max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 384,
        "assistant_only_loss": True, "logging_steps": 1, "save_steps": 10}},
        paths={name: str(tmp_path / name) for name in ("sft", "pairs", "checkpoints", "training_logs", "metrics")}
        | {"filtered": str(filtered_fixtures), "base_model": str(model_dir), "trained_model": str(tmp_path / "trained")})
    m = convert.run(p)
    assert m["rows"] + m["content_lost"] + m["template_error"] + m["template_mismatch"] == 40
    assert m["invalid"] == 0 and m["rows"] >= 20
    if m["content_lost"]:
        rejects = [r for r in map(__import__("json").loads, (tmp_path / "sft" / "rejects.jsonl").read_text().splitlines())]
        assert all(r["reason"] in ("content_lost", "template_error", "template_mismatch") and r["detail"] for r in rejects)
    t = train.run(p)
    assert t["sft"]["steps"] == 1 and t["sft"]["assistant_only_loss"] and t["sft"]["rows_skipped"] == 0
    assert 0 < t["sft"]["assistant_tokens"] < t["sft"]["tokens"]
    # The saved model stops on this template's end-of-turn tokens.
    stops = read_json(tmp_path / "trained" / "generation_config.json")["eos_token_id"]
    assert tok.convert_tokens_to_ids(stop_tokens(tok)[-1]) in (stops if isinstance(stops, list) else [stops])
