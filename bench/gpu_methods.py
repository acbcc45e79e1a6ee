"""The training path on a GPU, each method once: SFT with LoRA, full-parameter SFT, SimPO and DPO
(LoRA), each a Ray Train run through `train_model` (NCCL, bf16), its merged model then loaded on the
GPU and asked one question. For a lent GPU machine, where the embedded model's weights are not at
hand: `--model-dir` names a model (`--random-from DIR` builds one from DIR's config and tokenizer
with random weights: the point is that the path runs, and how fast). Writes
bench/results-gpu-methods.txt: per method, steps, first and last loss, seconds, and the merged
model's reply.

    python bench/gpu_methods.py --random-from .gpu/smollm2-config [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from train import MAX_LENGTH, write_data

from raysynth.config import TrainConfig
from raysynth.shipped import ALPACA_SEED, read_jsonl


QUESTION = "Name three primary colours."


def random_model(config_dir: Path, out: Path) -> Path:
    """A model with `config_dir`'s architecture and tokenizer and random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir)).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def preference_data(path: Path, rows: int) -> Path:
    """Seed instructions with their gold answer as chosen and another row's answer as rejected."""
    seeds = read_jsonl(ALPACA_SEED, rows + 1)
    pd.DataFrame({"prompt": [s["instruction"] for s in seeds[:-1]],
                  "chosen": [s["output"] for s in seeds[:-1]],
                  "rejected": [s["output"] for s in seeds[1:]]}).to_parquet(path)
    return path


def reply(model_dir: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                           tokenize=False)
    inputs = tokenizer(prompt, return_tensors="pt").to("cuda")
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def main() -> None:
    from common import write_results

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--random-from", type=Path)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results-gpu-methods.txt"))
    args = parser.parse_args()
    os.environ.setdefault("RAYSYNTH_NO_PROGRESS", "1")

    import torch

    from raysynth.pipeline import init_ray
    from raysynth.train import train_model

    init_ray()
    lines = [f"{'method':18}{'steps':>6}{'loss first -> last':>24}{'seconds':>9}  reply of the merged model"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model_dir or str(random_model(args.random_from, tmp / "model"))
        sft, prefs = write_data(tmp / "sft.parquet", 128), preference_data(tmp / "prefs.parquet", 128)
        base = dict(max_steps=args.steps, per_device_batch_size=8, max_length=MAX_LENGTH, num_workers=1,
                    use_gpu=True, save_steps=args.steps, logging_steps=1)
        runs = {"sft (LoRA)": (TrainConfig(method="sft", **base), sft),
                "sft (full)": (TrainConfig(method="sft", lora=None, learning_rate=1e-5, **base), sft),
                "simpo (LoRA)": (TrainConfig(method="simpo", **base), prefs),
                "dpo (LoRA)": (TrainConfig(method="dpo", **base), prefs)}
        for k, (name, (cfg, data)) in enumerate(runs.items()):
            started = time.time()
            merged = train_model(cfg, data, "bench-model", model_dir, tmp / f"run-{k}")
            seconds = time.time() - started
            summary = json.loads((merged.parent / "_done.json").read_text())
            lines.append(f"{name:18}{summary['steps']:>6}{summary['first_loss']:>12.3f} -> {summary['last_loss']:<9.3f}"
                         f"{seconds:>9.1f}  {reply(merged)!r:.60}")
            print(lines[-1], flush=True)
    model = f"model {args.model_dir}" if args.model_dir else f"{args.random_from.name}'s architecture, random weights"
    write_results(args.out, f"python bench/gpu_methods.py --steps {args.steps}", [
        f"{model}; 1 Ray Train worker on the GPU (NCCL, bf16), batch 8, {MAX_LENGTH} tokens a sample", *lines],
        ["seconds: the whole train_model call (worker start, model load, training, checkpoint, merge); "
         "one run of each, a check that the path works, not a timing study"],
        f"{torch.cuda.get_device_name(0)}")


if __name__ == "__main__":
    main()
