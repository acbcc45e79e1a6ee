"""The run's model registry (one file: models and the current pointer), `raysynth models` / `swap`,
the checkpoint check that refuses damaged weights, and the server's key and exposure rules. Fast:
no Ray, no engine."""

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysynth.config import ConfigError, ServeConfig
from raysynth.models import ModelNotFoundError, check_checkpoint
from raysynth.registry import UnknownModel, make_current, read_registry, register_model
from raysynth.serve import check_exposure
from raysynth.serve.keys import bearer_matches, is_loopback, read_key


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysynth.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def fake_checkpoint(path: Path, tensor_bytes: int = 64) -> Path:
    """A directory with a config and one safetensors file of a single float32 tensor."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    save_file({"w": torch.zeros(tensor_bytes // 4)}, path / "model.safetensors")
    return path


def test_registering_again_does_not_move_the_current_model_back(tmp_path):
    first, second = tmp_path / "m1", tmp_path / "m2"
    register_model(tmp_path, "iter-01", first, 1)
    register_model(tmp_path, "iter-02", second, 2)
    register_model(tmp_path, "iter-01", first, 1)  # a resumed run passing iteration 1 again
    registry = read_registry(tmp_path)
    assert registry.current == "iter-02" and set(registry.models) == {"iter-01", "iter-02"}
    register_model(tmp_path, "iter-01", second, 1)  # retrained: a new directory is a new registration
    assert read_registry(tmp_path).current_entry().path == str(second.resolve())
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["models.json", "models.json.lock"]


def test_rollback_makes_the_earlier_model_current_and_unknown_names_are_refused(tmp_path):
    register_model(tmp_path, "iter-01", tmp_path / "m1", 1)
    register_model(tmp_path, "iter-02", tmp_path / "m2", 2)
    assert make_current(tmp_path, "iter-01").name == "iter-01"
    registry = read_registry(tmp_path)
    assert registry.current == "iter-01" and registry.history == ["iter-01", "iter-02", "iter-01"]
    assert [e.name for e in registry.fallbacks()] == ["iter-02"]
    with pytest.raises(UnknownModel, match="raysynth models add"):
        make_current(tmp_path, "/some/dir")
    assert read_registry(tmp_path).current == "iter-01"
    # Registering without making current leaves the pointer alone.
    register_model(tmp_path, "candidate", tmp_path / "m3", 3, make_current=False)
    assert read_registry(tmp_path).current == "iter-01" and "candidate" in read_registry(tmp_path).models


def _register_many(run_dir: str, prefix: str) -> None:
    for i in range(40):
        register_model(Path(run_dir), f"{prefix}-{i}", Path(run_dir) / f"{prefix}-{i}", i)


def test_writers_in_two_processes_lose_no_registration(tmp_path):
    """Recipes (the driver) and an admin swap (a replica) write the same file: the lock keeps every
    read-modify-write whole."""
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_register_many, args=(str(tmp_path), p)) for p in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(60)
    assert [w.exitcode for w in writers] == [0, 0]
    assert len(read_registry(tmp_path).models) == 80


def test_a_run_from_before_the_single_registry_still_reads(tmp_path):
    entry = {"name": "old-iter-01", "path": "/m", "iteration": 1, "registered_at": 1.0}
    (tmp_path / "models.json").write_text(json.dumps({"old-iter-01": entry}))
    (tmp_path / "current_model.json").write_text(json.dumps(entry))
    registry = read_registry(tmp_path)
    assert registry.current == "old-iter-01" and registry.current_entry().path == "/m"


def test_a_truncated_safetensors_file_is_named(tmp_path):
    good = fake_checkpoint(tmp_path / "good")
    check_checkpoint(str(good))
    bad = fake_checkpoint(tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    with pytest.raises(ModelNotFoundError, match="model.safetensors is damaged"):
        check_checkpoint(str(bad))
    weights.write_bytes(b"\x00" * 4)
    with pytest.raises(ModelNotFoundError, match="damaged"):
        check_checkpoint(str(bad))


def test_models_add_list_and_swap_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    model = fake_checkpoint(tmp_path / "checkpoint-7")
    added = cli("models", "add", str(model), "--run-dir", str(run))
    assert added.returncode == 0 and "registered checkpoint-7" in added.stdout, added.stderr
    assert read_registry(run).current is None  # registered, not served until swapped to
    assert cli("swap", "checkpoint-7", "--run-dir", str(run)).returncode == 0
    listed = cli("models", "list", "--run-dir", str(run))
    assert "checkpoint-7 *" in listed.stdout and "champion" in listed.stdout
    refused = cli("swap", str(model), "--run-dir", str(run))  # a directory is not a registered name
    assert refused.returncode == 2 and "raysynth models add" in refused.stderr
    (model / "model.safetensors").write_bytes(b"\x01" * 10)
    damaged = cli("models", "add", str(model), "--name", "broken", "--run-dir", str(run))
    assert damaged.returncode == 2 and "damaged" in damaged.stderr
    assert "broken" not in read_registry(run).models


def test_keys_and_exposure(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYSYNTH_API_KEY", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("example.org")
    key_file = tmp_path / "api_key"
    assert read_key("RAYSYNTH_API_KEY", key_file) == ""
    key_file.write_text("from-file\n")
    assert read_key("RAYSYNTH_API_KEY", key_file) == "from-file"
    monkeypatch.setenv("RAYSYNTH_API_KEY", "from-env")
    assert read_key("RAYSYNTH_API_KEY", key_file) == "from-env"
    assert bearer_matches("Bearer from-env", "from-env") and not bearer_matches("Bearer x", "from-env")
    assert not bearer_matches("Bearer ", "")  # no key configured never matches an empty header
    monkeypatch.delenv("RAYSYNTH_API_KEY")
    check_exposure(ServeConfig(host="127.0.0.1"))
    check_exposure(ServeConfig(host="0.0.0.0", api_key_file=key_file))
    with pytest.raises(ConfigError, match="RAYSYNTH_API_KEY"):
        check_exposure(ServeConfig(host="0.0.0.0"))


def test_serve_on_all_interfaces_without_a_key_refuses_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAYSYNTH_API_KEY"}
    result = subprocess.run([sys.executable, "-m", "raysynth.cli", "serve", "--run-dir", str(tmp_path / "run"),
                             "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr
    assert "0.0.0.0" in result.stderr and "RAYSYNTH_API_KEY" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing registered, nothing started
