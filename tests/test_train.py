"""Ray Train fine-tuning: data shaping (fast) and 2-worker CPU runs on the embedded model (slow)."""

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from raysynth.config import ConfigError, TrainConfig, load_train_config
from raysynth.train.data import TrainDataError, check_columns, preference_records, sft_records

PROMPT = "What is the capital of France?"
ANSWER = "The capital of France is Paris, a city on the Seine."


def test_sft_records_are_prompt_completion():
    frame = pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    assert sft_records(frame) == [{"prompt": [{"role": "user", "content": "hi"}],
                                   "completion": [{"role": "assistant", "content": "yo"}]}]
    with pytest.raises(TrainDataError):
        sft_records(pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}))


def test_preference_records_are_conversational():
    frame = pd.DataFrame({"prompt": ["p"], "chosen": ["good"], "rejected": ["bad"]})
    record = preference_records(frame)[0]
    assert record["prompt"] == [{"role": "user", "content": "p"}]
    assert record["chosen"][0] == {"role": "assistant", "content": "good"}
    assert record["rejected"][0]["content"] == "bad"


def test_missing_columns_and_bad_config_are_named(tmp_path):
    data = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt": ["p"], "chosen": ["c"]}).to_parquet(data)
    with pytest.raises(TrainDataError, match="missing \\['rejected'\\]"):
        check_columns(data, "simpo")
    config = tmp_path / "train.yaml"
    config.write_text(f"data: {data}\ntrain:\n  method: simpo\n  lerning_rate: 1e-4\n")
    with pytest.raises(ConfigError, match="train.lerning_rate': unknown key"):
        load_train_config(config)
    config.write_text(f"data: {tmp_path / 'nope.parquet'}\n")
    with pytest.raises(ConfigError, match="field 'data': not found"):
        load_train_config(config)


# --- real training: 2 Ray Train workers (gloo), TRL, LoRA on the embedded model ---------------

def test_plain_records_for_a_model_without_a_chat_template():
    """prompt_format plain: the prompt as the Alpaca-style text the engine sends such a model, the
    reply as a plain completion (TRL appends the end-of-sequence token)."""
    frame = pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]})
    [record] = sft_records(frame, "plain")
    assert record["prompt"].startswith("Below is an instruction") and record["prompt"].endswith(
        "### Instruction:\nhi\n\n### Response:\n") and record["completion"] == "yo"
    [pair] = preference_records(pd.DataFrame({"prompt": ["p"], "chosen": ["good"], "rejected": ["bad"]}), "plain")
    assert pair["prompt"].endswith("### Instruction:\np\n\n### Response:\n")
    assert (pair["chosen"], pair["rejected"]) == ("good", "bad")


@pytest.fixture(scope="module")
def base_model():
    from raysynth.models import resolve_model

    return resolve_model("smollm2-135m")


def overfit_config(method: str, **changes) -> TrainConfig:
    """A tiny repeated batch at a high learning rate: the loss must fall."""
    settings = dict(method=method, max_steps=10, learning_rate=2e-3, warmup_ratio=0.0, per_device_batch_size=2,
                    max_length=128, save_steps=5, num_workers=2, max_failures=0)
    return TrainConfig(**{**settings, **changes})


def write_sft_data(path: Path, rows: int = 8) -> Path:
    turns = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]
    pd.DataFrame({"messages": [turns] * rows}).to_parquet(path)
    return path


def assert_learns(work: Path) -> dict:
    summary = json.loads((work / "_done.json").read_text())
    losses = [e["loss"] for e in summary["log_history"] if "loss" in e]
    print(f"{work.name}: losses {[round(x, 3) for x in losses]}")
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    return summary


@pytest.mark.slow
def test_sft_two_workers_learns_and_merged_model_generates(local_ray, base_model, tmp_path):
    import ray

    from raysynth.config import EngineConfig, SamplingConfig
    from raysynth.engine import VLLMStage
    from raysynth.train import train_model

    data = write_sft_data(tmp_path / "sft.parquet")
    model_dir = train_model(overfit_config("sft"), data, "smollm2-135m", base_model, tmp_path / "out")
    summary = assert_learns(model_dir.parent)
    assert summary["steps"] == 10 and summary["restarts_at_step"] == [0]
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("adapter_*"))

    # The merged directory is a plain model: the vLLM stage loads it and generates.
    prompt = json.dumps([{"role": "user", "content": PROMPT}])
    out = ray.data.from_items([{"prompt_messages": prompt}]).map_batches(
        VLLMStage, batch_format="pandas", batch_size=1, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"engine": EngineConfig(), "model_dir": str(model_dir),
                               "sampling": SamplingConfig(temperature=0, max_tokens=24)}).take_all()
    text = out[0]["completions"][0]
    print("merged model says:", text)
    assert out[0]["engine_error"] == "" and out[0]["tokens_out"] > 0 and "Paris" in text

    # Same settings and data again: skipped, not retrained.
    started = time.time()
    assert train_model(overfit_config("sft"), data, "smollm2-135m", base_model, tmp_path / "out") == model_dir
    assert time.time() - started < 5


@pytest.mark.slow
def test_a_base_model_without_a_chat_template_trains_and_answers_on_plain_text(local_ray, base_model, tmp_path):
    """I-SHEEP's base models have no chat template: with prompt_format plain, SFT trains on
    Alpaca-style text and the vLLM stage prompts the merged model the same way."""
    import ray
    from transformers import AutoTokenizer

    from raysynth.config import EngineConfig, SamplingConfig
    from raysynth.engine import VLLMStage
    from raysynth.train import train_model

    from tiny_models import without_chat_template

    bare = without_chat_template(Path(base_model), tmp_path / "no-template")
    assert AutoTokenizer.from_pretrained(bare).chat_template is None
    data = write_sft_data(tmp_path / "sft.parquet")
    model_dir = train_model(overfit_config("sft"), data, str(bare), str(bare), tmp_path / "out",
                            prompt_format="plain")
    assert_learns(model_dir.parent)
    assert json.loads((model_dir.parent / "_train.json").read_text())["prompt_format"] == "plain"
    prompt = json.dumps([{"role": "user", "content": PROMPT}])
    out = ray.data.from_items([{"prompt_messages": prompt}]).map_batches(
        VLLMStage, batch_format="pandas", batch_size=1, num_cpus=1,
        compute=ray.data.ActorPoolStrategy(size=1),
        fn_constructor_kwargs={"engine": EngineConfig(prompt_format="plain"), "model_dir": str(model_dir),
                               "sampling": SamplingConfig(temperature=0, max_tokens=24)}).take_all()
    text = out[0]["completions"][0]
    print("plain-trained model says:", text)
    assert out[0]["engine_error"] == "" and "Paris" in text


@pytest.mark.slow
def test_simpo_two_workers_learns(local_ray, base_model, tmp_path):
    from raysynth.train import train_model

    data, reversed_ = tmp_path / "pairs.parquet", tmp_path / "reversed.parquet"
    wrong = "I do not know. Maybe London or Berlin, hard to say."
    pd.DataFrame({"prompt": [PROMPT] * 8, "chosen": [ANSWER] * 8, "rejected": [wrong] * 8}).to_parquet(data)
    # Evaluated on the pairs the other way round: the trained model ranks every one of them wrong.
    pd.DataFrame({"prompt": [PROMPT] * 4, "chosen": [wrong] * 4, "rejected": [ANSWER] * 4}).to_parquet(reversed_)
    model_dir = train_model(overfit_config("simpo"), data, "smollm2-135m", base_model, tmp_path / "out",
                            eval_data=reversed_)
    summary = assert_learns(model_dir.parent)
    assert (model_dir / "config.json").is_file()
    assert summary["train_metrics"]["eval_rewards/accuracies"] == 0.0, summary["train_metrics"]


def _progress_step(out: Path) -> int:
    try:
        return json.loads(next(out.glob("sft-*/progress.json")).read_text())["step"]
    except (StopIteration, OSError, ValueError):
        return 0


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(local_ray, base_model, tmp_path):
    import ray
    from ray.util.state import list_actors

    from raysynth.train import train_model

    data = write_sft_data(tmp_path / "sft.parquet", rows=16)
    cfg = overfit_config("sft", max_steps=16, save_steps=4, max_failures=2)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        model=train_model(cfg, data, "smollm2-135m", base_model, tmp_path / "out")))
    thread.start()
    # Wait until training is two steps past the first checkpoint (so Ray Train has registered it),
    # then SIGKILL one training worker process.
    deadline = time.time() + 300
    while _progress_step(tmp_path / "out") < cfg.save_steps + 2:
        assert time.time() < deadline and thread.is_alive(), "training made no progress"
        time.sleep(0.5)
    # This test's own Ray (another local Ray on the machine must not make the lookup ambiguous).
    address = ray.get_runtime_context().gcs_address
    workers = [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])
               if "TrainWorker" in a.class_name]
    assert workers, "no live Ray Train worker found"
    os.kill(workers[0].pid, signal.SIGKILL)
    thread.join(timeout=600)
    assert "model" in result, "training did not complete after the worker was killed"
    summary = json.loads((result["model"].parent / "_done.json").read_text())
    print("restarts at steps:", summary["restarts_at_step"])
    assert summary["steps"] == 16
    assert summary["restarts_at_step"][0] == 0 and len(summary["restarts_at_step"]) == 2
    assert summary["restarts_at_step"][1] >= 4  # resumed from a checkpoint, not from scratch


@pytest.mark.slow
def test_dpo_full_fine_tuning_through_the_cli(base_model, tmp_path):
    """`raysynth train CONFIG` as a user runs it: DPO, full fine-tuning (no LoRA), one worker."""
    import subprocess
    import sys

    import yaml

    data = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt": [PROMPT] * 8, "chosen": [ANSWER] * 8,
                  "rejected": ["I do not know. Maybe London or Berlin, hard to say."] * 8}).to_parquet(data)
    settings = overfit_config("dpo", lora=None, num_workers=1, max_steps=6, save_steps=3)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": str(data), "model": "smollm2-135m", "out_dir": str(tmp_path / "out"),
                                      "train": settings.model_dump(mode="json", exclude_defaults=True)}))
    env = {**os.environ, "RAYSYNTH_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "raysynth.cli", "train", str(config)], capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model_dir = Path(result.stdout.split("merged model:")[1].split()[0])
    summary = assert_learns(model_dir.parent)
    assert summary["method"] == "dpo" and summary["steps"] == 6
    assert (model_dir / "model.safetensors").is_file() and not list(model_dir.parent.glob("**/adapter_model*"))
    # Full fine-tuning trained the norms too; LoRA ("all-linear") would leave them as they were.
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as tuned, \
            safe_open(str(Path(base_model) / "model.safetensors"), "pt") as base:
        name = "model.layers.0.input_layernorm.weight"
        assert not tuned.get_tensor(name).float().equal(base.get_tensor(name).float())
