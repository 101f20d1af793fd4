"""Assistant-only DPO on TRL: the log-probabilities of chosen and rejected sum over the assistant's own
tokens only.

TRL's DPOTrainer scores every completion token, so in a multi-turn agent continuation the tool results
and environment turns would count as the model's choice: it would be rewarded or penalised for what the
environment said. Here the pairs arrive tokenized by `faithful.preference_sample` (the same rendering
and assistant spans as SFT) with a mask per side, and two documented extension points carry that mask
into TRL's loss: the `data_collator` (TRL's preference collator, with `completion_mask` = the assistant
mask instead of "every completion token") and a `train_dataset` that is already tokenized (the trainer's
own tokenization is skipped, and the mask columns are kept as model inputs of the collator).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference

MASK_COLUMNS = ("chosen_mask", "rejected_mask")


@dataclass
class AssistantOnlyPreferenceCollator(DataCollatorForPreference):
    """TRL's collator, but a completion token counts in the loss only where the example's mask says so."""

    def torch_call(self, examples: list[dict]) -> dict:
        out = super().torch_call(examples)
        masks = [[0] * len(e["prompt_ids"]) + list(e[col]) for col in MASK_COLUMNS for e in examples]
        if self.max_length is not None:  # the same cut as the parent's, so masks stay aligned with input_ids
            cut = slice(None, self.max_length) if self.truncation_mode == "keep_start" else slice(-self.max_length, None)
            masks = [m[cut] for m in masks]
        width = out["completion_mask"].shape[1]
        out["completion_mask"] = torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.long)
        return out


@contextmanager
def _trl_deprecation_hidden():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


class AssistantOnlyDPOTrainer(DPOTrainer):
    """DPOTrainer for datasets tokenized with assistant masks (prompt_ids, chosen_ids, rejected_ids,
    chosen_mask, rejected_mask); other datasets go through TRL's own preparation."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" not in dataset.column_names:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            # as TRL does: a prompt that fills max_length leaves nothing to score
            dataset = dataset.filter(lambda e: len(e["prompt_ids"]) < args.max_length)
        return dataset

    # TRL 1.16 reads transformers' deprecated `model.is_gradient_checkpointing` when it precomputes the reference
    # log-probs (at construction, or when training starts): TRL's to change, nothing a user can set, not shown.
    def __init__(self, *args, **kwargs):
        with _trl_deprecation_hidden():
            super().__init__(*args, **kwargs)

    def train(self, *args, **kwargs):
        with _trl_deprecation_hidden():
            return super().train(*args, **kwargs)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *(c for c in MASK_COLUMNS
                                                               if c not in self._signature_columns)]


def collator(tokenizer, config) -> AssistantOnlyPreferenceCollator:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return AssistantOnlyPreferenceCollator(pad_token_id=pad, max_length=config.max_length,
                                           truncation_mode=config.truncation_mode,
                                           pad_to_multiple_of=config.pad_to_multiple_of)
