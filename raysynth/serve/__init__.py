"""`raysynth serve`: start the OpenAI-compatible Ray Serve app (serve/app.py) for a run.

The run's `current_model.json` is the single pointer: recipes move it when they register an
iteration, `raysynth swap` and `POST /admin/swap` move it by hand, and every replica follows it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from raysynth.config import ServeConfig
from raysynth.models import EMBEDDED_MODEL, resolve_model
from raysynth.train import register_model, registered_models

APP_NAME = "raysynth"


def point_run_at(run_dir: Path, model: str, name: str | None = None) -> dict[str, Any]:
    """Make `model` (a name registered in the run, a model directory, the embedded model or a hub id)
    the run's current model, under `name`; returns the pointer entry."""
    models = registered_models(run_dir)
    if model in models:
        entry = models[model]
        return register_model(run_dir, name or entry["name"], Path(entry["path"]), entry["iteration"])
    path = resolve_model(model)
    default_name = model if model == EMBEDDED_MODEL or not Path(model).exists() else Path(path).name
    run_dir.mkdir(parents=True, exist_ok=True)
    return register_model(run_dir, name or default_name, Path(path), 0)


def initial_pointer(cfg: ServeConfig) -> dict[str, Any]:
    """What the server starts with: `model` if given, else the run's current model, else the embedded one."""
    pointer = cfg.run_dir / "current_model.json"
    if cfg.model is None and pointer.is_file():
        return json.loads(pointer.read_text())
    return point_run_at(cfg.run_dir, cfg.model or EMBEDDED_MODEL, cfg.model_name)


def start_server(cfg: ServeConfig) -> str:
    """Deploy the app (non-blocking) and return its base URL."""
    from ray import serve

    from raysynth.serve.app import ModelServer

    initial_pointer(cfg)
    actor_options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
    if key:  # replicas may run on other nodes: hand them the key the driver was started with
        actor_options["runtime_env"] = {"env_vars": {cfg.api_key_env: key}}
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    deployment = ModelServer.options(
        autoscaling_config={"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests},
        max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
        ray_actor_options=actor_options,
        # Model load takes tens of seconds on CPU; health checks must allow for it.
        health_check_timeout_s=120,
    )
    serve.run(deployment.bind(cfg, str(cfg.run_dir.resolve())), name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{cfg.host}:{cfg.port}"


def wait_until_healthy(health_url: str, timeout_s: float = 600) -> None:
    """Poll a server's health route until it answers 200 (model load takes tens of seconds on CPU)."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(health_url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{health_url} did not answer 200 within {timeout_s:.0f} s")
