"""Multi-node training, shown: on a local two-node `ray.cluster_utils.Cluster`, a SimPO run places
its two workers on different nodes (`placement_strategy: SPREAD`) and checkpoints to storage both
nodes read; the node of one worker is removed mid-run and a replacement node joins; Ray Train
restarts the worker group from the last checkpoint and the run completes."""

import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import free_port

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


def worker_nodes(ray) -> set[str]:
    """Nodes of the training workers: the bundles (one a worker) of the run's placement group."""
    groups = [g for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
    return set(groups[-1]["bundles_to_node_id"].values()) if groups else set()


def progress_step(work: Path) -> int:
    try:
        return json.loads(next(work.glob("simpo-*/progress.json")).read_text())["step"]
    except (StopIteration, OSError, ValueError):
        return 0


@pytest.mark.timeout(900)
def test_simpo_spread_over_two_nodes_survives_losing_one(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from raysynth.config import TrainConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import init_ray
    from raysynth.train import train_model

    ray.shutdown()
    # The head has room for both workers: only SPREAD puts the second one on the other node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "dashboard_port": free_port()})
    second = cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        init_ray()
        data = tmp_path / "pairs.parquet"
        pd.DataFrame({"prompt": [PROMPT] * 8, "chosen": ["The capital of France is Paris."] * 8,
                      "rejected": ["I do not know, maybe London."] * 8}).to_parquet(data)
        cfg = TrainConfig(method="simpo", max_steps=12, save_steps=4, per_device_batch_size=2, max_length=128,
                          learning_rate=2e-3, warmup_ratio=0.0, num_workers=2, placement_strategy="SPREAD",
                          max_failures=2)
        work, result = tmp_path / "out", {}
        thread = threading.Thread(target=lambda: result.update(
            model=train_model(cfg, data, "smollm2-135m", resolve_model("smollm2-135m"), work)))
        thread.start()
        deadline = time.time() + 400
        while progress_step(work) < cfg.save_steps + 2:  # past the first checkpoint, registered
            assert time.time() < deadline and thread.is_alive(), "training made no progress"
            time.sleep(0.5)
        nodes = worker_nodes(ray)
        assert len(nodes) == 2, f"the two workers share a node: {nodes}"
        assert second.node_id in nodes

        cluster.remove_node(second)  # the node and the worker on it are gone
        cluster.add_node(num_cpus=1)  # a replacement joins
        thread.join(timeout=600)
        assert "model" in result, "training did not complete after losing a node"
        summary = json.loads((result["model"].parent / "_done.json").read_text())
        print("restarts at steps:", summary["restarts_at_step"])
        assert summary["steps"] == 12
        restarts = summary["restarts_at_step"]
        assert restarts[0] == 0 and len(restarts) == 2 and restarts[1] >= cfg.save_steps  # from a checkpoint
        assert (result["model"] / "model.safetensors").is_file()
    finally:
        ray.shutdown()
        cluster.shutdown()
