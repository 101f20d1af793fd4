"""base_model: `model.name_or_path` as a model directory every later stage loads the same way.

The embedded default becomes a safetensors checkpoint; any other id or path gets its tokenizer saved
with a pointer to its weights (models.py). A chat template that cannot show tool calls is replaced by
the fallback, and the template's probe is stored beside it (`gymtrl_chat_format.json`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..io import write_json
from ..models import materialize_base
from ..params import Params
from .common import main

METRICS = "base_model.json"


def run(params: Params) -> dict:
    info = materialize_base(params.model.name_or_path, params.paths.base_model, params.model.trust_remote_code)
    write_json(Path(params.paths.metrics) / METRICS, info)
    return info


if __name__ == "__main__":
    sys.exit(main("base_model", run))
