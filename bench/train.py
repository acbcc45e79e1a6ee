"""Training throughput: Ray Train (2 workers, gloo) against bare TRL in one process, in one run.

Same data, same global batch, same steps, same LoRA SFT on the embedded model. Prints samples/s of
each, measured two ways: the training loop alone (HF's train_samples_per_second: what per-sample
overhead means) and the whole call including worker start-up and model loading. Target: Ray
Train's per-sample loop throughput at least 0.9x bare TRL's.
Usage: python bench/train.py [--steps 30] [--workers 2] [--rows 256]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from raysynth.config import TrainConfig
from raysynth.models import resolve_model

ALPACA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "seed" / "alpaca_3k.jsonl"


def write_data(path: Path, rows: int) -> Path:
    if ALPACA.exists():
        items = [json.loads(line) for line in ALPACA.read_text().splitlines()[:rows]]
        pairs = [(i["instruction"] + ("\n\n" + i["input"] if i.get("input") else ""), i["output"]) for i in items]
    else:
        pairs = [(f"Count to {n}.", " ".join(str(k) for k in range(1, n + 1))) for n in range(1, rows + 1)]
    pd.DataFrame({"messages": [[{"role": "user", "content": p}, {"role": "assistant", "content": a}]
                               for p, a in pairs]}).to_parquet(path)
    return path




def global_samples(cfg: TrainConfig) -> int:
    return cfg.max_steps * cfg.per_device_batch_size * cfg.num_workers


def bare_trl(cfg: TrainConfig, data: Path, model_dir: str, threads: int) -> tuple[float, float]:
    """One process, all cores, the global batch on one device."""
    import torch

    from raysynth.train.worker import build_trainer

    torch.set_num_threads(threads)
    single = cfg.model_copy(update={"per_device_batch_size": cfg.per_device_batch_size * cfg.num_workers,
                                    "num_workers": 1})
    started = time.time()
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer({"train": single.model_dump(), "data": str(data), "model_dir": model_dir,
                                 "trust_remote_code": False}, out, callbacks=[])
        trainer.train()
    wall = time.time() - started
    loop = next(e["train_samples_per_second"] for e in trainer.state.log_history if "train_samples_per_second" in e)
    return loop, global_samples(cfg) / wall


def ray_train(cfg: TrainConfig, data: Path, model_dir: str, parent: Path) -> tuple[float, float]:
    from raysynth.pipeline import init_ray
    from raysynth.train import train_model

    init_ray()
    out = train_model(cfg, data, "smollm2-135m", model_dir, parent)
    summary = json.loads((out.parent / "_done.json").read_text())
    return summary["train_metrics"]["train_samples_per_second"], global_samples(cfg) / summary["fit_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="per worker; bare TRL runs workers x batch")
    args = parser.parse_args()
    os.environ.setdefault("RAYSYNTH_NO_PROGRESS", "1")
    model_dir = resolve_model("smollm2-135m")
    cfg = TrainConfig(method="sft", max_steps=args.steps, per_device_batch_size=args.batch, max_length=256,
                      num_workers=args.workers, save_steps=args.steps, logging_steps=5)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "sft.parquet", args.rows)
        bare_loop, bare_wall = bare_trl(cfg, data, model_dir, threads=args.workers)
        ray_loop, ray_wall = ray_train(cfg, data, model_dir, Path(tmp) / "ray")
    print(f"\nLoRA SFT, {args.steps} steps, global batch {args.batch * args.workers}, max_length 256")
    print(f"{'':26}{'bare TRL':>12}{'Ray Train':>12}{'ratio':>8}")
    print(f"{'loop samples/s':26}{bare_loop:12.2f}{ray_loop:12.2f}{ray_loop / bare_loop:8.2f}")
    print(f"{'end-to-end samples/s':26}{bare_wall:12.2f}{ray_wall:12.2f}{ray_wall / bare_wall:8.2f}")


if __name__ == "__main__":
    main()
