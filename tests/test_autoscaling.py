"""Autoscaling, shown: on a fake-node cluster driven by Ray's own autoscaler (what
`ray.cluster_utils.AutoscalingCluster` starts), an LLM stage with `concurrency: [1, 3]` starts with one
engine; while it has work the pool asks for more, the autoscaler adds nodes and the pool reaches three
engines; after the stage the idle nodes are released. Both pool modes: a stage's Ray Data actor pool
(`keep_alive: false`), and the run's kept engines, which shrink back to one after `idle_timeout_s`
and give the last node back when released.

Each engine asks for one unit of `engine_slot`, a resource only the worker node type has (one per
node), so every engine beyond the first needs a node the autoscaler must add. The head node keeps
the CPUs for Ray Data's light tasks.

The cluster is started here as AutoscalingCluster does (`ray start --head --autoscaling-config`, with
RAY_FAKE_CLUSTER=1), not by it: in Ray 2.60's wheel it reads a config file the wheel lacks
(fake_multi_node/example.yaml), and its start and shutdown run `ray stop --force`, which stops every
Ray cluster on the machine. This one has its own GCS port and is stopped by that port alone. The
stage runs in a process of its own (this file as a script), so a hang fails this test alone."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import free_port

SLOT = "engine_slot"
IDLE_TIMEOUT_MIN = 0.1  # the autoscaler removes a node idle for 6 s
MAX_ENGINES = 3
KEPT_IDLE_TIMEOUT_S = 10  # a kept engine beyond the first stops after 10 s without rows


def fake_cluster_config(gcs_address: str) -> dict:
    """The fake-node provider's config: a head with the CPUs, up to three one-engine worker nodes."""
    return {
        "cluster_name": "raysynth-autoscaling-test", "max_workers": MAX_ENGINES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
            "engine-node": {"resources": {"CPU": 1, SLOT: 1}, "node_config": {}, "min_workers": 0,
                            "max_workers": MAX_ENGINES}},
        "head_node_type": "ray.head.default", "upscaling_speed": 1.0, "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}


def stop_cluster(gcs_address: str) -> None:
    """Kill this cluster's processes (every Ray process names its GCS address), no other cluster's."""
    port = gcs_address.rsplit(":", 1)[1]
    marks = (gcs_address, f"--gcs_server_port={port}")
    cluster = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.pid != os.getpid() and any(mark in cmdline for mark in marks):
            try:  # with its children: the agents retitle themselves (`ray::DashboardAgent`)
                cluster |= {process, *process.children(recursive=True)}
            except psutil.Error:
                pass
    for process in cluster:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    # `ray start` records the cluster here, and ray.init() without an address joins what it names.
    current = Path("/tmp/ray/ray_current_cluster")
    if current.is_file() and gcs_address in current.read_text():
        current.unlink(missing_ok=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("keep_alive", [False, True], ids=["stage_pool", "kept_engines"])
def test_a_pool_grows_to_three_engines_on_added_nodes_and_the_nodes_go_after(tmp_path, keep_alive: bool):
    from ray._private.services import get_node_ip_address

    bin_dir = Path(sys.executable).parent
    # A loopback-only test cluster: Ray 2.60 turns token auth on for `ray start`; opt out here.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAYSYNTH_NO_PROGRESS": "1", "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    gcs_address = f"{get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(gcs_address)))
    try:
        subprocess.run([str(bin_dir / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                        f"--autoscaling-config={config}", "--dashboard-host=127.0.0.1",
                        f"--dashboard-port={free_port()}", "--disable-usage-stats"],
                       check=True, env=env, capture_output=True, timeout=180)
        done = subprocess.run([sys.executable, __file__, str(tmp_path), gcs_address, json.dumps(keep_alive)],
                              capture_output=True,
                              text=True, timeout=780, env=env)
    finally:
        stop_cluster(gcs_address)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    timeline = result["timeline"]  # (seconds, alive worker nodes, engines placed) while the stage ran
    engines = [e for _, _, e in timeline if e]
    assert engines and engines[0] == 1, timeline  # the pool started with one engine
    assert max(engines) == MAX_ENGINES, timeline  # and grew to its maximum
    assert max(n for _, n, _ in timeline) == MAX_ENGINES, timeline  # on nodes the autoscaler added
    assert result["rows_out"] + sum(result["rejected"].values()) == result["rows_in"] == result["prompts"]
    assert result["worker_nodes_after"] == 0, result  # idle nodes released after the stage
    assert result["released_within_s"] < 180, result
    if keep_alive:  # the kept pool shrank to its minimum while the run went on, then was released
        assert result["kept_engines_after_idle"] == 1 and result["worker_nodes_after_idle"] == 1, result


def worker_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get(SLOT))


def watch(ray, stop: threading.Event, timeline: list, started: float) -> None:
    """Every second: alive worker nodes, and engines placed (each holds one engine_slot)."""
    while not stop.is_set():
        placed = ray.cluster_resources().get(SLOT, 0) - ray.available_resources().get(SLOT, 0)
        timeline.append((round(time.time() - started, 1), worker_nodes(ray), int(placed)))
        stop.wait(1.0)


def scale(tmp_path: Path, gcs_address: str, keep_alive: bool) -> None:
    import ray

    from raysynth.config import EngineConfig, SamplingConfig
    from raysynth.models import resolve_model
    from raysynth.pipeline import Lineage, init_ray, run_llm_stage, write_source_stage
    from raysynth.steps.eval import respond_step
    from raysynth.store import RunDir

    os.environ["RAY_ADDRESS"] = gcs_address  # init_ray joins this cluster
    init_ray()
    try:
        run, lineage = RunDir(tmp_path / "run"), Lineage("test", 1, "smollm2-135m")
        topics = ["the sea", "a city", "a forest", "winter", "a train", "music", "a market", "the moon"]
        prompts = [{"prompt": f"Write a long story about {t}, part {k}."} for k in range(12) for t in topics]
        source = write_source_stage(run, 1, "prompts", prompts, {"n": len(prompts)}, lineage)
        # Three engines share this machine's cores: no CPU asked (the head keeps those for the light
        # tasks), short OpenMP spins (engine.omp_spin_count); each engine's KV cache is sized for its batch. Ray Data grows a pool while its
        # actors' call slots are full (tasks in flight / (batches_in_flight x actors)), the kept pool
        # while every engine has batches waiting for a slot: two batches in flight per engine, as the
        # default 8 would take 16 of this stage's 24 batches into one engine.
        engine = EngineConfig(batch_size=4, keep_alive=keep_alive, concurrency=(1, MAX_ENGINES), num_cpus=0,
                              resources={SLOT: 1}, batches_in_flight=2, idle_timeout_s=KEPT_IDLE_TIMEOUT_S,
                              omp_spin_count=1000)
        step = respond_step(SamplingConfig(temperature=0, max_tokens=64))
        timeline: list = []
        stop, started = threading.Event(), time.time()
        watcher = threading.Thread(target=watch, args=(ray, stop, timeline, started), daemon=True)
        watcher.start()
        model_dir = resolve_model("smollm2-135m")
        stage = run_llm_stage(run, 1, step, source, engine, model_dir, lineage)
        stop.set()
        watcher.join()
        shrunk = {}
        if keep_alive:  # the run holds its engines: the pool shrinks to min, and release gives the rest back
            ended = time.time()
            while (len(run.engines.actors(engine, model_dir)) > 1 or worker_nodes(ray) > 1) \
                    and time.time() - ended < 240:
                time.sleep(2)
            shrunk = {"kept_engines_after_idle": len(run.engines.actors(engine, model_dir)),
                      "worker_nodes_after_idle": worker_nodes(ray)}
            run.engines.release()
        ended = time.time()
        while worker_nodes(ray) and time.time() - ended < 240:
            time.sleep(2)
        manifest = stage.manifest()
        print(json.dumps({"timeline": timeline, "prompts": len(prompts), "rows_in": manifest["rows_in"],
                          "rows_out": manifest["rows_out"], "rejected": manifest["rejected"],
                          "worker_nodes_after": worker_nodes(ray),
                          "released_within_s": round(time.time() - ended, 1), **shrunk}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    scale(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
