"""`raysynth serve`: start the OpenAI-compatible Ray Serve app (serve/app.py) for a run.

The run's model registry (`models.json`, raysynth/registry.py) is the single source: recipes register
each iteration and make it current, `raysynth swap` and `POST /admin/swap` make a registered model
current, and every replica follows it. Only the driver registers directories (`raysynth models add`).
"""

from __future__ import annotations

import time
from pathlib import Path

from raysynth.config import ConfigError, ServeConfig
from raysynth.models import EMBEDDED_MODEL, resolve_model
from raysynth.registry import ModelEntry, make_current, read_registry, register_model
from raysynth.serve.keys import is_loopback, read_key, where_keys_go

APP_NAME = "raysynth"
# Ray Serve runs a replica's own code on a second event loop, in a thread of its own, unless told not
# to. The model server is async throughout (its blocking work goes to threads), so it runs on the
# replica's main loop and each request skips two hand-overs between loops: 0.873x the requests/s of
# vLLM's own server against 0.853x before (bench/results-serve.txt).
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}


def add_model(run_dir: Path, model: str, name: str | None = None, current: bool = False) -> ModelEntry:
    """Register a model directory, the embedded model or a hub id in the run under `name`
    (default: the embedded model's name, else the directory name)."""
    path = resolve_model(model)
    default_name = model if model == EMBEDDED_MODEL or not Path(model).exists() else Path(path).name
    entry = register_model(run_dir, name or default_name, Path(path), 0, make_current=current)
    return make_current(run_dir, entry.name) if current else entry  # already registered: still made current


def initial_model(cfg: ServeConfig) -> ModelEntry:
    """What the server starts with: `model` if given (registered and made current), else the run's
    current model, else the embedded one."""
    if cfg.model is not None:
        registered = read_registry(cfg.run_dir).models.get(cfg.model)
        if registered is None:
            return add_model(cfg.run_dir, cfg.model, cfg.model_name, current=True)
        if cfg.model_name not in (None, cfg.model):  # a registered model served under another name
            register_model(cfg.run_dir, cfg.model_name, Path(registered.path), registered.iteration)
        return make_current(cfg.run_dir, cfg.model_name or cfg.model)
    current = read_registry(cfg.run_dir).current_entry()
    return current or add_model(cfg.run_dir, EMBEDDED_MODEL, cfg.model_name, current=True)


def check_exposure(cfg: ServeConfig) -> None:
    """Refuse to bind a non-loopback address without an inference key."""
    if not is_loopback(cfg.host) and not read_key(cfg.api_key_env, cfg.api_key_file):
        raise ConfigError(f"serve: host {cfg.host!r} is reachable from other machines and no API key is set: "
                          f"{where_keys_go(cfg.api_key_env, cfg.api_key_file, 'api')}; "
                          "or bind 127.0.0.1 (--host 127.0.0.1)")


def start_server(cfg: ServeConfig) -> str:
    """Deploy the app (non-blocking) and return its base URL."""
    from ray import serve

    from raysynth.serve.app import ModelServer

    check_exposure(cfg)
    initial_model(cfg)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    deployment = ModelServer.options(
        autoscaling_config={"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                            "target_ongoing_requests": cfg.target_ongoing_requests,
                            "upscale_delay_s": cfg.upscale_delay_s, "downscale_delay_s": cfg.downscale_delay_s},
        max_ongoing_requests=cfg.max_ongoing_requests, max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus,
                           "runtime_env": {"env_vars": REPLICA_ENV}},
        health_check_period_s=cfg.health_check_period_s, health_check_timeout_s=cfg.health_check_timeout_s,
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
