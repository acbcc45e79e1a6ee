"""Ray Train fine-tuning: TRL SFT / SimPO / DPO on many workers, checkpointed and resumable.

  train_model(...)  -> <parent>/<method>-<hash>/model   (LoRA merged: vLLM and the server load it)
  raysynth.registry.register_model(...) makes it the run's current model.

A training run's directory holds Ray Train's checkpoints (`ray-train/`), so re-running after a
driver failure resumes from the latest one, and a worker failure restarts the worker group from
it (FailureConfig). `_done.json` marks a finished run; its identity hashes the training settings,
the base model and the data files, so changed settings train anew and unchanged ones are skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from raysynth.config import TrainConfig
from raysynth.hashing import stable_hash
from raysynth.store import atomic_write_json
from raysynth.train.data import check_columns, data_files
from raysynth.train.worker import METRICS_FILE, PROGRESS_FILE, train_loop_per_worker

DONE_FILE = "_done.json"


def data_fingerprint(path: Path) -> list[tuple[str, int]]:
    """File names and sizes: stage parts are immutable once committed, so this names the data."""
    return [(Path(f).name, os.path.getsize(f)) for f in data_files(path)]


def train_model(cfg: TrainConfig, data: Path, base_model: str, base_model_dir: str, parent: Path,
                trust_remote_code: bool = False, prompt_format: str = "chat",
                free_resources: Callable[[], None] = lambda: None, eval_data: Path | None = None) -> Path:
    """Train on `data` and return the merged model directory; skip when already trained. `prompt_format`:
    the engine's (chat template, or plain Alpaca-style text for a model without one; train/data.py).
    `free_resources` is called before the workers start: a run passes its engine pool's `release`, as
    the workers need the CPUs / GPUs and memory its kept engines hold. `eval_data` (the same columns as
    `data`): evaluated once after training; its `eval_*` metrics land in the summary (`training_summary`)."""
    # Where the workers run (resources, placement) does not change the model: not part of its identity.
    identity = {"train": cfg.model_dump(mode="json", exclude={"resources_per_worker", "placement_strategy"}),
                "data": data_fingerprint(data),
                "model": base_model,
                # Only when not the default, so that existing runs keep their trained models.
                **({"prompt_format": prompt_format} if prompt_format != "chat" else {}),
                **({"eval_data": data_fingerprint(eval_data)} if eval_data is not None else {})}
    work = (parent / f"{cfg.method}-{stable_hash(identity)}").resolve()
    model_dir = work / "model"
    if (work / DONE_FILE).is_file():
        print(f"[skip] {work} (trained)")
        return model_dir
    check_columns(data, cfg.method)
    if eval_data is not None:
        check_columns(eval_data, cfg.method)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "_train.json", identity)

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    free_resources()

    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.use_gpu else {}),
                 **cfg.resources_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": cfg.model_dump(mode="json"), "model_dir": base_model_dir,
                           "data": str(Path(data).resolve()),
                           "eval_data": str(Path(eval_data).resolve()) if eval_data is not None else None,
                           "trust_remote_code": trust_remote_code, "prompt_format": prompt_format,
                           "progress_path": str(work / PROGRESS_FILE)},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=resources, placement_strategy=cfg.placement_strategy),
        # Same (storage_path, name) on a re-run: Ray Train resumes from the latest checkpoint.
        run_config=RunConfig(name="ray-train", storage_path=str(work),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    started = time.time()
    with _progress_bar(work / PROGRESS_FILE, f"train/{cfg.method}"):
        result = trainer.fit()
    fit_seconds = time.time() - started
    with result.checkpoint.as_directory() as directory:
        hf_checkpoint = Path(directory) / "checkpoint"
        state = json.loads((hf_checkpoint / "trainer_state.json").read_text())
        history = state["log_history"]
        merge_checkpoint(hf_checkpoint, base_model_dir, model_dir, lora=cfg.lora is not None,
                         trust_remote_code=trust_remote_code)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    summary = {"method": cfg.method, "model_dir": str(model_dir), "seconds": round(time.time() - started, 1),
               "fit_seconds": round(fit_seconds, 1),
               "steps": state["global_step"], "train_metrics": json.loads((work / METRICS_FILE).read_text()),
               "restarts_at_step": [e["train_begin_step"] for e in history if "train_begin_step" in e],
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
               "log_history": history}
    atomic_write_json(work / DONE_FILE, summary)
    print(f"[done] train/{cfg.method}: {summary['steps']} steps, loss {summary['first_loss']} -> "
          f"{summary['last_loss']}, model in {model_dir}")
    return model_dir


def training_summary(model_dir: Path) -> dict:
    """What `train_model` recorded of the training that made `model_dir`: steps, losses, metrics."""
    return json.loads((Path(model_dir).parent / DONE_FILE).read_text())


class _progress_bar:
    """Follows rank 0's progress file while `fit()` blocks the driver."""

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)

    def _follow(self) -> None:
        bar = tqdm(desc=self.label, unit="step", disable=os.environ.get("RAYSYNTH_NO_PROGRESS") == "1")
        while not self.stop.wait(2.0):
            try:
                progress = json.loads(self.path.read_text())
            except (OSError, ValueError):
                continue
            bar.total = progress["max_steps"]
            bar.n = progress["step"]
            if progress.get("loss") is not None:
                bar.set_postfix(loss=f"{progress['loss']:.3f}", refresh=False)
            bar.refresh()
        bar.close()


def merge_checkpoint(hf_checkpoint: Path, base_model_dir: str, out: Path, lora: bool,
                     trust_remote_code: bool = False) -> None:
    """A plain HF model directory from the final checkpoint: LoRA merged into the base weights.

    Runs on the driver (the merged model must land in the run dir); for models too large for the
    driver's memory, merge with `peft` on a bigger node and register the directory instead.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading and writing bars of a model this small: console noise
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if lora:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, str(hf_checkpoint)).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(hf_checkpoint), dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code)
    model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tokenizer_dir = hf_checkpoint if (hf_checkpoint / "tokenizer_config.json").is_file() else base_model_dir
    AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
