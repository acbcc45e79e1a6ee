"""Resources freed between phases: on a Ray whose one unit of a custom resource stands in for a
cluster's scarce accelerator, generation -> training -> generation, each phase asking for that unit,
completes. A phase that kept the unit after it ended would leave the next one waiting: the timeout
fails the test instead of hanging it."""

import os

import pandas as pd
import pytest

from raysynth.config import EngineConfig, SamplingConfig, TrainConfig
from raysynth.models import resolve_model
from raysynth.pipeline import Lineage, run_llm_stage, write_source_stage
from raysynth.steps.eval import respond_step
from raysynth.store import RunDir

pytestmark = pytest.mark.slow
UNIT = {"accelerator": 1.0}


@pytest.fixture
def ray_with_one_accelerator():
    import ray

    from raysynth.pipeline import init_ray

    ray.shutdown()
    os.environ["RAYSYNTH_NO_PROGRESS"] = "1"
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(resources={"accelerator": 1}, log_to_driver=False)
    init_ray()  # this Ray, with raysynth's Ray Data settings
    yield ray
    ray.shutdown()


@pytest.mark.timeout(900)
def test_generation_training_generation_each_get_the_one_accelerator(ray_with_one_accelerator, tmp_path):
    ray = ray_with_one_accelerator
    run, lineage = RunDir(tmp_path / "run"), Lineage("test", 1, "smollm2-135m")
    source = write_source_stage(run, 1, "prompts", [{"prompt": "Name a colour."}, {"prompt": "Say hello."}],
                                {"n": 2}, lineage)
    step, engine = respond_step(SamplingConfig(temperature=0, max_tokens=8)), EngineConfig(batch_size=2, resources=UNIT)

    first = run_llm_stage(run, 1, step, source, engine, resolve_model("smollm2-135m"), lineage)
    assert first.manifest()["rows_out"] == 2
    assert ray.available_resources().get("accelerator", 0) == 0  # the kept engine holds it

    from raysynth.train import train_model

    data = tmp_path / "sft.parquet"
    turns = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    pd.DataFrame({"messages": [turns] * 4}).to_parquet(data)
    train = TrainConfig(method="sft", max_steps=2, save_steps=2, num_workers=1, per_device_batch_size=2,
                        max_length=64, resources_per_worker=UNIT)
    trained = train_model(train, data, "smollm2-135m", resolve_model("smollm2-135m"), tmp_path / "train",
                          free_resources=run.engines.release)

    second = run_llm_stage(run, 2, step, source, engine, str(trained), Lineage("test", 2, str(trained)))
    assert second.manifest()["rows_out"] == 2
    run.engines.release()
