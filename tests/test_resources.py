"""Resources freed between phases: on a Ray whose one unit of a custom resource stands in for a
cluster's scarce accelerator, generation -> training -> generation, each phase asking for that unit,
completes. A phase that kept the unit after it ended would leave the next one waiting: the timeout
fails the test instead of hanging it.

The chain runs in a process of its own (this file run as a script) on a fresh local Ray
(`address="local"`, never a cluster an earlier test left behind): a Ray started with a custom
resource must not share the test process's Ray state with the modules around it, and a hang or a
crash there fails this test alone."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

UNIT = {"accelerator": 1.0}


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_generation_training_generation_each_get_the_one_accelerator(tmp_path):
    env = {**os.environ, "RAYSYNTH_NO_PROGRESS": "1"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], capture_output=True, text=True, timeout=900,
                          env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "chain done: 2 rows, trained, 2 rows" in done.stdout


def accelerator_free(ray, timeout_s: float) -> bool:
    """Whether the unit is back within `timeout_s` (Ray's resource view follows a release by up to a
    heartbeat)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if ray.available_resources().get("accelerator", 0) == 1:
            return True
        time.sleep(0.5)
    return False


def chain(tmp_path: Path) -> None:
    import pandas as pd
    import ray

    from raysynth.config import EngineConfig, SamplingConfig, TrainConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import Lineage, init_ray, run_llm_stage, write_source_stage
    from raysynth.steps.eval import respond_step
    from raysynth.store import RunDir
    from raysynth.train import train_model

    ray.init(address="local", resources={"accelerator": 1}, log_to_driver=False, include_dashboard=False)
    init_ray()  # this Ray, with raysynth's Ray Data settings
    run, lineage = RunDir(tmp_path / "run"), Lineage("test", 1, "smollm2-135m")
    source = write_source_stage(run, 1, "prompts", [{"prompt": "Name a colour."}, {"prompt": "Say hello."}],
                                {"n": 2}, lineage)
    step, engine = respond_step(SamplingConfig(temperature=0, max_tokens=8)), EngineConfig(batch_size=2, resources=UNIT)

    first = run_llm_stage(run, 1, step, source, engine, resolve_model("smollm2-135m"), lineage)
    assert first.manifest()["rows_out"] == 2
    assert ray.available_resources().get("accelerator", 0) == 0, "the kept engine should hold the unit"

    data = tmp_path / "sft.parquet"
    turns = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    pd.DataFrame({"messages": [turns] * 4}).to_parquet(data)
    train = TrainConfig(method="sft", max_steps=2, save_steps=2, num_workers=1, per_device_batch_size=2,
                        max_length=64, resources_per_worker=UNIT)
    trained = train_model(train, data, "smollm2-135m", resolve_model("smollm2-135m"), tmp_path / "train",
                          free_resources=run.engines.release)
    assert accelerator_free(ray, 60), f"training kept the unit: {ray.available_resources()}"

    second = run_llm_stage(run, 2, step, source, engine, str(trained), Lineage("test", 2, str(trained)))
    assert second.manifest()["rows_out"] == 2
    run.engines.release()
    assert accelerator_free(ray, 60), f"the second engine kept the unit: {ray.available_resources()}"
    print("chain done: 2 rows, trained, 2 rows")
    ray.shutdown()


if __name__ == "__main__":
    chain(Path(sys.argv[1]))
