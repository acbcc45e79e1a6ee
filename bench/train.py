"""Training throughput: Ray Train (2 workers, gloo) against bare TRL in one process, in one run.

Same data, same global batch, same steps, same LoRA SFT on the embedded model. Every row is longer
than max_length, so every sample is cut to exactly max_length tokens on both sides: the same work
per sample, no padding on either side, whichever rows a worker's shard holds. Prints samples/s of
each, measured two ways: the training loop alone (HF's train_samples_per_second: what per-sample
overhead means) and the whole call including worker start-up and model loading. Each measurement
runs in a fresh process; each side is warmed once, then measured `--repeats` times, interleaved in
alternating order. Target: Ray Train's per-sample loop throughput at least 0.9x bare TRL's.
Usage: python bench/train.py [--steps 12] [--workers 2] [--rows 256] [--repeats 3]

On a GPU machine (`--gpu`): one worker per GPU on NCCL, bf16, against bare TRL on the same GPU;
`--model-dir` names the model (on a machine without the embedded model's weights: a model built
from its config with random weights, which trains at the same speed). Results go to
results-train-gpu.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from raysynth.config import TrainConfig
from raysynth.models import resolve_model
from raysynth.shipped import CORPUS, read_jsonl

MAX_LENGTH = 256


def write_data(path: Path, rows: int) -> Path:
    """`rows` conversations, each well over MAX_LENGTH tokens (shipped corpus paragraphs)."""
    paragraphs = [row["text"] for row in read_jsonl(CORPUS)]
    conversations = []
    for i in range(rows):
        text = " ".join(paragraphs[(i + k) % len(paragraphs)] for k in range(4))
        conversations.append([{"role": "user", "content": f"Continue this text: {paragraphs[i % len(paragraphs)]}"},
                              {"role": "assistant", "content": text}])
    pd.DataFrame({"messages": conversations}).to_parquet(path)
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
    out = train_model(cfg, data, "bench-model", model_dir, parent)
    summary = json.loads((out.parent / "_done.json").read_text())
    return summary["train_metrics"]["train_samples_per_second"], global_samples(cfg) / summary["fit_seconds"]


def measure(side: str, args: argparse.Namespace) -> dict[str, float]:
    os.environ.setdefault("RAYSYNTH_NO_PROGRESS", "1")
    model_dir = args.model_dir or resolve_model("smollm2-135m")
    cfg = TrainConfig(method="sft", max_steps=args.steps, per_device_batch_size=args.batch, max_length=MAX_LENGTH,
                      num_workers=args.workers, save_steps=args.steps, logging_steps=5, use_gpu=args.gpu)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "sft.parquet", args.rows)
        if side == "bare":
            loop, wall = bare_trl(cfg, data, model_dir, threads=args.workers)
        else:
            loop, wall = ray_train(cfg, data, model_dir, Path(tmp) / "ray")
    return {"loop": loop, "end_to_end": wall}


def main() -> None:
    from common import interleaved, spread, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2, help="per worker; bare TRL runs workers x batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (bf16, NCCL), one worker per GPU")
    parser.add_argument("--model-dir", help="a model directory instead of the embedded model")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--side", choices=["bare", "ray"], help="one measurement (used by the bench itself)")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(measure(args.side, args)))
        return
    shared = ["--steps", str(args.steps), "--workers", str(args.workers), "--rows", str(args.rows),
              "--batch", str(args.batch)] + (["--gpu"] if args.gpu else []) + (
              ["--model-dir", args.model_dir] if args.model_dir else [])
    runs = interleaved(Path(__file__), ["bare", "ray"], shared, args.repeats)
    if args.gpu:
        import torch

        machine = f"{torch.cuda.get_device_name(0)} (bf16; Ray Train on NCCL)"
        setup = f"{args.workers} Ray Train worker(s) x {args.batch}, one GPU each; bare TRL: 1 process x " \
                f"{args.batch * args.workers} on one GPU"
    else:
        machine = "this machine's CPU (2 cores)"
        setup = f"{args.workers} Ray Train workers x {args.batch}; bare TRL: 1 process x " \
                f"{args.batch * args.workers}, {args.workers} threads"
    model = f"model {args.model_dir}" if args.model_dir else "the embedded model"
    lines = [f"LoRA SFT of {model}, {args.steps} steps, global batch {args.batch * args.workers} ({setup}), every "
             f"sample {MAX_LENGTH} tokens", f"{'samples/s':22}{'bare TRL':>22}{'Ray Train':>22}{'ratio of medians':>18}"]
    for phase in ("loop", "end_to_end"):
        bare, ray = ([r[phase] for r in runs[side]] for side in ("bare", "ray"))
        lines.append(f"{phase.replace('_', ' '):22}{spread(bare, '{:.2f}'):>22}{spread(ray, '{:.2f}'):>22}"
                     f"{statistics.median(ray) / statistics.median(bare):18.2f}")
    out = args.out or Path(__file__).with_name("results-train-gpu.txt" if args.gpu else "results-train.txt")
    write_results(out, f"python bench/train.py {' '.join(shared)} --repeats {args.repeats}", lines,
                  ["loop = HF train_samples_per_second (the training loop only); end to end adds worker start-up "
                   "and model load (Ray's start excluded: each measurement starts it before the clock)", 
                   "target: loop ratio >= 0.9"], machine)


if __name__ == "__main__":
    main()
