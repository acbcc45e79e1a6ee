"""The function every Ray Train worker runs: TRL's SFT / SimPO / DPO trainer on the full dataset.

Data: per-worker reads. Each worker reads the training files into a map-style HF dataset and
HF's DistributedSampler gives each rank a disjoint, seeded slice. TRL's trainers tokenise,
truncate and collate map-style datasets, and the sampler's position is part of an HF checkpoint,
so a resumed run continues on exactly the rows it had not seen. We do not feed a Ray Dataset:
its read tasks need CPUs that the training workers hold (on a 2-core machine they never get
one), and the rows (at most a few hundred thousand short ones) fit every worker's memory. The
files must be readable by every worker: a shared filesystem, as Ray Train's storage path needs
on multi-node clusters anyway, or an object-store URI that pandas reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
from transformers import TrainerCallback

from raysynth.config import TrainConfig
from raysynth.train.data import preference_records, read_frame, sft_records

PROGRESS_FILE = "progress.json"
METRICS_FILE = "train_metrics.json"


class RecordRestarts(TrainerCallback):
    """Marks each (re)start in the log history, so a run's history shows where it resumed."""

    def on_train_begin(self, args, state, control, **kwargs):
        state.log_history.append({"train_begin_step": state.global_step})


class WriteProgress(TrainerCallback):
    """Rank 0 writes step, total and loss for the driver's progress bar (storage is shared)."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": state.global_step, "max_steps": state.max_steps,
                                       "loss": (logs or {}).get("loss")}))
            os.replace(tmp, self.path)


def _training_args(cfg: TrainConfig, output_dir: str) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        output_dir=output_dir, per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,  # HF's default 8 can exceed a device's memory
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio
        logging_steps=cfg.logging_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=1, report_to=[], seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=True,
        use_cpu=not cfg.use_gpu, bf16=cfg.use_gpu, ddp_find_unused_parameters=False,
        max_length=cfg.max_length,
    )
    if cfg.strategy == "fsdp":
        args.update(fsdp="full_shard auto_wrap", fsdp_config={"state_dict_type": "FULL_STATE_DICT"})
    elif cfg.strategy == "deepspeed":
        args["deepspeed"] = {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
                             "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                             "gradient_accumulation_steps": "auto"}
    return args


def _trainer(cfg: TrainConfig, model, tokenizer, dataset, eval_dataset, output_dir: str, callbacks: list):
    from peft import LoraConfig

    peft_config = None
    if cfg.lora is not None:
        peft_config = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                 target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    args = _training_args(cfg, output_dir)
    common = dict(model=model, train_dataset=dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                  peft_config=peft_config, callbacks=callbacks)
    if cfg.method == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(args=SFTConfig(**args), **common)
    if cfg.method == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        return CPOTrainer(args=CPOConfig(**args, loss_type="simpo", cpo_alpha=0.0, beta=cfg.simpo_beta,
                                         simpo_gamma=cfg.simpo_gamma), **common)
    from trl import DPOConfig, DPOTrainer

    return DPOTrainer(args=DPOConfig(**args, beta=cfg.dpo_beta), **common)


def build_trainer(config: dict[str, Any], output_dir: str, callbacks: list):
    """The TRL trainer for `config` (the train_loop_config): data, tokenizer, model, method."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = TrainConfig(**config["train"])
    prompt_format = config.get("prompt_format", "chat")

    def records(path: str) -> list[dict[str, Any]]:
        frame = read_frame(Path(path))
        return sft_records(frame, prompt_format) if cfg.method == "sft" else preference_records(frame, prompt_format)

    tokenizer = AutoTokenizer.from_pretrained(config["model_dir"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        config["model_dir"], dtype=torch.bfloat16 if cfg.use_gpu else torch.float32,
        trust_remote_code=config["trust_remote_code"])
    eval_dataset = Dataset.from_list(records(config["eval_data"])) if config.get("eval_data") else None
    return _trainer(cfg, model, tokenizer, Dataset.from_list(records(config["data"])), eval_dataset, output_dir,
                    callbacks)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    # A local scratch dir per worker: only rank 0 writes HF checkpoints, and the report callback
    # hands them to Ray Train, which persists them under the run's storage path.
    output_dir = tempfile.mkdtemp(prefix="raysynth-train-")
    callbacks = [RayTrainReportCallback(), RecordRestarts(), WriteProgress(Path(config["progress_path"]))]
    trainer = prepare_trainer(build_trainer(config, output_dir, callbacks))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        output = trainer.train()
    else:
        with checkpoint.as_directory() as directory:
            output = trainer.train(
                resume_from_checkpoint=os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME))
    # Every rank evaluates (its slice of the held-out rows; the metrics are gathered over all ranks).
    evaluated = trainer.evaluate() if config.get("eval_data") else {}
    # The last checkpoint is saved before HF logs the run's totals (runtime, samples/s): rank 0
    # writes them beside the progress file, on the storage the driver reads.
    if ray.train.get_context().get_world_rank() == 0:
        path = Path(config["progress_path"]).with_name(METRICS_FILE)
        path.write_text(json.dumps({"global_step": output.global_step, **output.metrics, **evaluated}))
