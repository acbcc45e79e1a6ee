"""Every config the project ships loads and validates: configs/*.yaml as they are, jobs/*.yaml with
their cluster paths swapped for test files, cluster.yaml against Ray's own cluster schema; and each
job's actors and training workers fit a node type of cluster.yaml."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from raysynth.config import load_serve_config, load_train_config
from raysynth.recipes import load_config

RUN_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "train-sft-small.yaml")
JOBS = sorted(p for p in (REPO / "jobs").glob("*.yaml") if p.name != "serve.yaml")
CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_every_config_and_job_is_shipped_and_tested():
    names = {p.name for p in RUN_CONFIGS} | {p.name for p in JOBS}
    assert names == {"condor-small.yaml", "synpo-small.yaml", "isheep-small.yaml", "refed-small.yaml",
                     "condor.yaml", "synpo.yaml", "isheep.yaml", "refed.yaml"}


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_small_config_loads_as_shipped(path: Path):
    config = load_config(path)
    assert config.recipe == path.name.removesuffix("-small.yaml")
    assert config.engine.model == "smollm2-135m"  # the embedded model: runs on a fresh clone
    # The header says how to launch it.
    assert f"raysynth run configs/{path.name}" in path.read_text().split("\nrecipe:")[0], path.name


def test_train_config_loads_once_its_data_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = REPO / "configs" / "train-sft-small.yaml"
    data = yaml.safe_load(path.read_text())["data"]
    assert f"raysynth run configs/{Path(data).parts[1]}.yaml" in path.read_text()  # the header names its producer
    monkeypatch.chdir(tmp_path)
    Path(data).parent.mkdir(parents=True)
    Path(data).touch()
    job = load_train_config(path)
    assert job.train.method == "sft" and job.model == "smollm2-135m"


def on_test_storage(value: Any, root: Path) -> Any:
    """The job's values with cluster paths (/mnt/...) moved under `root`; files are created empty."""
    if isinstance(value, dict):
        return {k: on_test_storage(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [on_test_storage(v, root) for v in value]
    if isinstance(value, str) and value.startswith("/mnt/"):
        local = root / value.removeprefix("/mnt/")
        if local.suffix:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.touch()
        else:
            local.mkdir(parents=True, exist_ok=True)
        return str(local)
    return value


def node_types() -> dict[str, dict[str, float]]:
    return {name: node["resources"] for name, node in CLUSTER["available_node_types"].items()}


def fits_a_node(cpus: float, gpus: float) -> bool:
    return any(cpus <= r.get("CPU", 0) and gpus <= r.get("GPU", 0) for r in node_types().values())


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_loads_and_fits_the_cluster(path: Path, tmp_path: Path):
    data = on_test_storage(yaml.safe_load(path.read_text()), tmp_path)
    local = tmp_path / path.name
    local.write_text(yaml.safe_dump(data))
    config = load_config(local)
    assert config.recipe == path.stem
    assert f"raysynth run jobs/{path.name}" in path.read_text()
    engine = config.engine
    assert engine.num_gpus >= 1 and not engine.keep_alive  # GPU actors in autoscaling per-stage pools
    assert fits_a_node(engine.num_cpus, engine.num_gpus), (engine.num_cpus, engine.num_gpus)
    trainings = [config.train] + [getattr(config.synpo, k) for k in ("generator_train", "improver_train")
                                  if config.recipe == "synpo"]
    for train in trainings:
        assert train.use_gpu and fits_a_node(train.cpus_per_worker, train.gpus_per_worker), train
        # The workers fit in the cluster's largest possible pool of the node type that holds them.
        gpus = sum(node["resources"].get("GPU", 0) * node["max_workers"]
                   for node in CLUSTER["available_node_types"].values())
        assert train.num_workers * train.gpus_per_worker <= gpus


def test_serve_job_loads_and_fits_the_cluster():
    config = load_serve_config(REPO / "jobs" / "serve.yaml")
    assert config.num_gpus >= 1 and fits_a_node(config.num_cpus, config.num_gpus)
    assert config.max_replicas >= config.min_replicas
    # Exposed, so guarded: keys from files copied to every node by cluster.yaml.
    assert config.host == "0.0.0.0" and config.api_key_file and config.admin_key_file
    assert str(config.api_key_file.parent) in CLUSTER["file_mounts"]


def test_cluster_exposes_nothing_unauthenticated():
    head = " ".join(CLUSTER["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert all("RAY_AUTH_MODE=token" in c for c in CLUSTER["head_start_ray_commands"] + CLUSTER["worker_start_ray_commands"]
               if c.strip().startswith(("ray start", "RAY_AUTH_MODE")))
    assert "~/.ray/auth_token" in CLUSTER["file_mounts"]


def test_cluster_yaml_passes_rays_schema():
    import json

    import jsonschema
    import ray.autoscaler

    # The schema `ray up` validates a cluster config against (before it fills in defaults).
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    assert CLUSTER["head_node_type"] in CLUSTER["available_node_types"]
    assert sum(node["max_workers"] for node in CLUSTER["available_node_types"].values()) <= CLUSTER["max_workers"]
