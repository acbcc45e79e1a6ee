"""The model's own view of its data, for I-SHEEP's prompt-free filters: the perplexity of each
response given its instruction, and a last-layer representation of the pair; then the selection
(perplexity cut, density sampling over k-means clusters, or both).

The representation is the mean of the last hidden layer over the pair's tokens (the paper says
"vector representations from the model's final layer" without the pooling). The paper's "KNN
clustering" with K clusters is read as k-means (scipy's kmeans2, k-means++ start, seeded).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray

from raysynth.engine import plain_prompt
from raysynth.faults import ACTOR_POOL_RETRIES
from raysynth.hashing import stable_hash
from raysynth.pipeline import Lineage, commit_decisions, run_stage
from raysynth.recipes.isheep.config import DataFilterConfig
from raysynth.store import RunDir, StageDir


class SelfStatsActor:
    """Callable class for `map_batches`: adds `perplexity` and `embedding` (or `stats_error`)."""

    def __init__(self, model_dir: str, cfg: DataFilterConfig, trust_remote_code: bool = False,
                 prompt_format: str = "chat"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if cfg.num_gpus > 0 else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(max(1, int(cfg.num_cpus)))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code,
            dtype=torch.bfloat16 if self.device == "cuda" else torch.float32).to(self.device).eval()
        self.max_length = cfg.max_length
        self.prompt_format = prompt_format

    def _encode(self, prompt: str, response: str) -> tuple[list[int], int]:
        """Token ids of (user prompt, assistant response) and where the response starts: through the chat
        template, or in the plain Alpaca-style form the engine and training give a model without one
        (prompt and response tokenized as one text, then the end-of-sequence token, as TRL does)."""
        user = [{"role": "user", "content": prompt}]
        if self.prompt_format == "plain":
            text = plain_prompt(user)
            head = self.tokenizer.encode(text, add_special_tokens=True)
            eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
            full = self.tokenizer.encode(text + response, add_special_tokens=True) + eos
        else:
            head = _ids(self.tokenizer.apply_chat_template(user, tokenize=True, add_generation_prompt=True))
            full = _ids(self.tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                                           tokenize=True))
        if full[:len(head)] != head:
            raise ValueError("the chat template does not extend the prompt with the response")
        if len(full) > self.max_length:
            raise ValueError(f"{len(full)} tokens > max_length {self.max_length}")
        return full, len(head)

    def _stats(self, encoded: list[tuple[list[int], int]]) -> tuple[list[float], list[list[float]]]:
        import torch

        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in encoded], device=self.device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in encoded], device=self.device)
        labels = ids.clone()
        for row, (tokens, start) in enumerate(encoded):
            labels[row, :start] = -100
            labels[row, len(tokens):] = -100
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits, targets = out.logits[:, :-1].float(), labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        counted = (targets != -100).sum(dim=1).clamp(min=1)
        perplexity = torch.exp(nll.sum(dim=1) / counted).tolist()
        last = out.hidden_states[-1].float()
        pooled = (last * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=1, keepdim=True)
        return perplexity, pooled.cpu().tolist()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        n = len(batch)
        perplexity, embedding, errors = [float("nan")] * n, [[] for _ in range(n)], [""] * n
        encoded: dict[int, tuple[list[int], int]] = {}
        for i, (prompt, response) in enumerate(zip(batch["prompt"].astype(str), batch["response"].astype(str))):
            try:
                encoded[i] = self._encode(prompt, response)
            except Exception as exc:  # counted and dropped by the commit task, never a crash
                errors[i] = f"{type(exc).__name__}: {exc}"
        if encoded:
            rows = sorted(encoded)
            values, vectors = self._stats([encoded[i] for i in rows])
            for i, value, vector in zip(rows, values, vectors):
                perplexity[i], embedding[i] = value, vector
        batch = batch.copy()
        batch["perplexity"], batch["embedding"], batch["stats_error"] = perplexity, embedding, errors
        return batch


def _ids(encoded) -> list[int]:
    """apply_chat_template(tokenize=True) gives a list, or a BatchEncoding in newer transformers."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def commit_stats(batch: pd.DataFrame, name: str, stage_dir: str, lineage: Lineage) -> pd.DataFrame:
    rows = batch.drop(columns=["perplexity", "embedding", "stats_error"]).to_dict("records")
    errors = batch["stats_error"].tolist()
    reasons = [("stats_error" if e else None) for e in errors]
    extra = [{"perplexity": float(p), "embedding": [float(v) for v in e]}
             for p, e in zip(batch["perplexity"], batch["embedding"])]
    kept = commit_decisions(StageDir(stage_dir), name, lineage, rows, reasons, errors, extra)
    return pd.DataFrame([{"rows_in": len(rows), "rows_out": kept}])


def run_self_stats_stage(run: RunDir, iteration: int, name: str, source: StageDir, model: str, model_dir: str,
                         cfg: DataFilterConfig, lineage: Lineage, trust_remote_code: bool = False,
                         prompt_format: str = "chat") -> StageDir:
    """Perplexity and representation of every (prompt, response) row of `source` under `model`, in the
    engine's prompt format."""
    identity = {"model": model, "input": source.name,
                "stats": cfg.model_dump(mode="json", include={"max_length"}),
                # Only when not the default, so that existing runs keep their stages.
                **({"prompt_format": prompt_format} if prompt_format != "chat" else {})}

    def add_ops(ds, stage: StageDir):
        run.engines.release()  # the model's HF actors need the CPUs / GPUs the kept engines hold
        ds = ds.map_batches(SelfStatsActor, batch_format="pandas", batch_size=cfg.batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=cfg.concurrency[0], max_size=cfg.concurrency[1]),
                            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, **ACTOR_POOL_RETRIES,
                            fn_constructor_kwargs={"model_dir": model_dir, "cfg": cfg,
                                                   "trust_remote_code": trust_remote_code,
                                                   "prompt_format": prompt_format})
        return ds.map_batches(commit_stats, batch_format="pandas", batch_size=None, num_cpus=0.25,
                              fn_kwargs={"name": name, "stage_dir": str(stage.path), "lineage": lineage})

    return run_stage(run, iteration, name, identity, source, cfg.batch_size, f"{lineage.recipe}/{name}", add_ops)


def data_filter_reasons(frame: pd.DataFrame, cfg: DataFilterConfig, seed: int) -> list[str | None]:
    """Per row (in `frame`'s order): None to keep, else why it was not selected."""
    perplexity = frame["perplexity"].astype(float).to_numpy()
    if cfg.kind == "perplexity":
        return [None if p <= cfg.max_perplexity else "perplexity_above_max" for p in perplexity]
    labels = cluster_labels(np.array(frame["embedding"].tolist(), dtype=np.float64), cfg.clusters, seed)
    keep: set[int] = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if cfg.kind == "density_perplexity":
            members = members[np.argsort(perplexity[members], kind="stable")]
        else:  # a seeded random pick per cluster, independent of row order
            members = np.array(sorted(members, key=lambda i: stable_hash([seed, frame["id"].iloc[i]], 16)))
        keep.update(int(i) for i in members[:cfg.per_cluster])
    return [None if i in keep else "not_sampled_from_cluster" for i in range(len(frame))]


def cluster_labels(vectors: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each row; k is capped at the number of distinct rows."""
    from scipy.cluster.vq import kmeans2

    if len(vectors) == 0:
        return np.zeros(0, dtype=int)
    k = min(clusters, len(np.unique(vectors, axis=0)))
    if k <= 1:
        return np.zeros(len(vectors), dtype=int)
    _, labels = kmeans2(vectors, k, minit="++", seed=np.random.default_rng(seed))
    return labels
