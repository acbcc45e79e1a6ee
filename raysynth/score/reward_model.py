"""Scalar reward models: any Hugging Face sequence-classification model that scores a chat.

ArmoRM (RLHFlow/ArmoRM-Llama3-8B-v0.1) ships custom code whose output carries `.score`; other
reward models return `logits[:, 0]`. Remote code runs only when the config sets trust_remote_code.
"""

from __future__ import annotations

import torch


class SequenceRewardModel:
    def __init__(self, model: str, device: str = "cpu", max_length: int = 4096, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model, trust_remote_code=trust_remote_code,
            dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32).to(device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.max_length = device, max_length

    @torch.no_grad()
    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One scalar per (prompt, response), formatted with the model's chat template."""
        texts = [self.tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
            for p, r in zip(prompts, responses)]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length, add_special_tokens=False).to(self.device)
        output = self.model(**batch)
        scores = getattr(output, "score", None)
        if scores is None:
            scores = output.logits[:, 0]
        return scores.float().reshape(len(texts), -1)[:, 0].cpu().tolist()
