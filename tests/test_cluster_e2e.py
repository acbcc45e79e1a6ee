"""The chain on a two-node Ray cluster, and submitted as a Ray job to a local head node."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, free_port, run_raysynth, write_tiny_config

pytestmark = pytest.mark.slow


def sft_count(run_dir: Path) -> int:
    return len(pd.read_parquet(run_dir / "iter-00" / "sft" / "sft.parquet"))


def test_two_node_cluster(tmp_path: Path):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        ray.shutdown()
        run_dir = tmp_path / "run"
        # Per-stage autoscaling engine pools, as the cluster jobs (jobs/*.yaml) run them.
        config = write_tiny_config(tmp_path, run_dir, rounds=0, keep_alive=False)
        run_raysynth("run", str(config), env={"RAY_ADDRESS": cluster.address})
        assert sft_count(run_dir) >= 3
        # Both nodes did work: the job's tasks and actors (engine pools among them) ran on each.
        ray.init(address=cluster.address)
        try:
            from ray.util.state import list_actors, list_tasks

            gcs = ray.get_runtime_context().gcs_address
            nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            actors = list_actors(address=gcs, limit=10000, raise_on_missing_output=False)
            tasks = list_tasks(address=gcs, limit=10000, raise_on_missing_output=False)
        finally:
            ray.shutdown()
        worked = {t.node_id for t in tasks if t.node_id} | {a.node_id for a in actors if a.node_id}
        assert worked == nodes, (worked, nodes)
        assert any("VLLMStage" in a.class_name for a in actors), {a.class_name for a in actors}
    finally:
        cluster.shutdown()


def test_ray_job_submit(tmp_path: Path):
    bin_dir = Path(sys.executable).parent
    # A loopback-only test head: Ray 2.60 turns token auth on for `ray start`; opt out here.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    dashboard = free_port()
    ray_cli = str(bin_dir / "ray")
    subprocess.run([ray_cli, "start", "--head", f"--port={free_port()}", "--num-cpus=2",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        run_dir = tmp_path / "run"
        config = write_tiny_config(tmp_path, run_dir, rounds=0)
        result = subprocess.run(
            [ray_cli, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", f"--working-dir={REPO}",
             "--", sys.executable, "-m", "raysynth.cli", "run", str(config)],
            env={**env, "RAYSYNTH_NO_PROGRESS": "1"}, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0 and "succeeded" in result.stdout.lower(), result.stdout[-4000:] + result.stderr[-3000:]
        assert sft_count(run_dir) >= 3
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
