"""PairRM (llm-blender/PairRM-hf): a pairwise ranker on DeBERTa-v3-large.

The module below keeps the reference implementation's attribute names (`pretrained_model`,
`head_layer`) and config fields (`n_tasks`, `drop_out`, `source_prefix_id`, `cand1_prefix_id`,
`cand2_prefix_id`, ...), so `from_pretrained` reads the published checkpoint's state dict as is.
PyPI `llm-blender` is not a dependency: it pins old transformers and pulls in training extras that
do not install beside our torch/vLLM pins.

Inputs are formatted as the reference does: `<|source|>` + prompt, `<|candidate1|>` + A and
`<|candidate2|>` + B, each encoded on its own (with its [CLS]/[SEP]), concatenated; the source is
cut to `source_max_length` tokens and each candidate to half of what is left of the full length.
The head scores (source, candidate) pairs; the model's logit is left minus right.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DebertaV2Config, DebertaV2Model, DebertaV2PreTrainedModel

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH = 1224, 412  # the reference's defaults


class PairRMModel(DebertaV2PreTrainedModel):
    config_class = DebertaV2Config

    def __init__(self, config: DebertaV2Config):
        super().__init__(config)
        self.pretrained_model = DebertaV2Model(config)
        hidden = config.hidden_size
        self.head_layer = nn.Sequential(
            nn.Dropout(config.drop_out), nn.Linear(2 * hidden, hidden), nn.Tanh(),
            nn.Dropout(config.drop_out), nn.Linear(hidden, config.n_tasks),
        )
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logit that candidate 1 beats candidate 2, one per row (mean over the tasks)."""
        keep = attention_mask.ne(0).any(dim=0)  # drop all-padding columns, as the reference does
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        states = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        def at(token_id: int) -> torch.Tensor:
            rows, cols = torch.where(input_ids == token_id)
            return states[rows, cols, :]

        source = at(self.config.source_prefix_id)
        left = self.head_layer(torch.cat([source, at(self.config.cand1_prefix_id)], dim=-1))
        right = self.head_layer(torch.cat([source, at(self.config.cand2_prefix_id)], dim=-1))
        return (left - right).mean(dim=-1)


def encode_pairs(tokenizer: Any, sources: list[str], first: list[str], second: list[str],
                 source_max_length: int = SOURCE_MAX_LENGTH,
                 candidate_max_length: int = CANDIDATE_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """Token ids for (source, candidate 1, candidate 2) rows, padded to the full length."""
    full = source_max_length + 2 * candidate_max_length
    ids = []
    for source, a, b in zip(sources, first, second):
        source_ids = tokenizer.encode(SOURCE_PREFIX + source, max_length=source_max_length, truncation=True)
        room = (full - len(source_ids)) // 2
        ids.append(source_ids
                   + tokenizer.encode(CAND1_PREFIX + a, max_length=room, truncation=True)
                   + tokenizer.encode(CAND2_PREFIX + b, max_length=room, truncation=True))
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding="max_length", max_length=full)


class PairRM:
    """Loads a PairRM checkpoint (hub id or local dir) and compares candidate pairs."""

    def __init__(self, model: str, device: str = "cpu", source_max_length: int = SOURCE_MAX_LENGTH,
                 candidate_max_length: int = CANDIDATE_MAX_LENGTH):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = PairRMModel.from_pretrained(model).to(device).eval()
        self.device = device
        self.lengths = (source_max_length, candidate_max_length)

    @torch.no_grad()
    def compare(self, prompts: list[str], first: list[str], second: list[str]) -> list[float]:
        """Position-swapped preference for `first` over `second`: (f(A, B) - f(B, A)) / 2.

        Averaging both orders removes the ranker's position bias; swapping A and B flips the sign.
        """
        n = len(prompts)
        batch = encode_pairs(self.tokenizer, prompts * 2, first + second, second + first, *self.lengths)
        logits = self.model(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return ((logits[:n] - logits[n:]) / 2).float().cpu().tolist()
