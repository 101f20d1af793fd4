"""Shared fixtures: the real Gym fixture files, and a tiny model built from scratch (a few MB)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "gym-0.4.0"


def raw_params(**sections) -> dict:
    """The repository's params.yaml (the one home of every default) with `sections` merged in, so a test
    states only what it changes."""
    from gymtrl.params import deep_merge

    return deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), sections)


def make_params(**sections):
    from gymtrl.params import parse_params

    return parse_params(raw_params(**sections))


def write_params(path: Path, **sections) -> None:
    Path(path).write_text(yaml.safe_dump(raw_params(**sections), sort_keys=False))


def fixture(name: str) -> Path:
    return FIXTURES / f"resources_servers__{name}__example_rollouts.jsonl"


@pytest.fixture(scope="session")
def base_tokenizer():
    """The embedded model's tokenizer as shipped: the vocabulary the family tokenizers are built on."""
    from transformers import AutoTokenizer

    from gymtrl.models import EMBEDDED_GGUF, embedded_dir

    return AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF)


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded model's real tokenizer, with the pipeline's tool template installed."""
    from transformers import AutoTokenizer

    from gymtrl.models import EMBEDDED_GGUF, embedded_dir, ensure_tool_template

    tok = AutoTokenizer.from_pretrained(embedded_dir(), gguf_file=EMBEDDED_GGUF)
    ensure_tool_template(tok)
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_tokenizer) -> Path:
    """A 2-layer Llama with the embedded tokenizer, random weights, saved as a normal checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-model")
    tok = embedded_tokenizer
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temp project folder (cwd) holding a copy of the fixtures under tests/fixtures/gym-0.4.0."""
    shutil.copytree(FIXTURES, tmp_path / "tests" / "fixtures" / "gym-0.4.0")
    monkeypatch.chdir(tmp_path)
    return tmp_path
