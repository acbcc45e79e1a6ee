"""raysynth command line: run a recipe, inspect a run."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="raysynth: synthetic data for LLM self-improvement on Ray (Condor, SynPO, I-SHEEP, REFED).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/condor-small.yaml"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where stages are stored; overrides run_dir. "
                                           "Re-running on the same dir skips committed stages and resumes."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set engine.batch_size=32 (repeatable)"),
) -> None:
    """Run a recipe end to end. Uses the Ray cluster in RAY_ADDRESS when set, else starts a local Ray."""
    from raysynth.config import ConfigError, load_config
    from raysynth.models import ModelNotFoundError, resolve_model

    overrides = list(set_) + ([f"run_dir={run_dir}"] if run_dir else [])
    try:
        cfg = load_config(config, overrides)
        resolve_model(cfg.engine.model)  # fail before anything is written
    except ConfigError as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2)
    except ModelNotFoundError as exc:
        typer.echo(f"config error: {config}: field 'engine.model': {exc}", err=True)
        raise typer.Exit(2)

    from raysynth.pipeline import init_ray
    from raysynth.recipes import RECIPES
    from raysynth.status import print_status
    from raysynth.store import atomic_write_bytes

    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cfg.run_dir / "config.yaml", _dump_yaml(cfg).encode())
    started = time.time()
    init_ray()
    result = RECIPES[cfg.recipe](cfg)
    print_status(cfg.run_dir)
    typer.echo(f"\n{result['rows']} samples in {result['jsonl']}\n(and {result['parquet']}); "
               f"{time.time() - started:.0f} s")
    if result.get("model"):
        typer.echo(f"fine-tuned model (now the run's current model): {result['model']}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML), e.g. configs/train-sft-small.yaml"),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set train.max_steps=20 (repeatable)"),
) -> None:
    """Fine-tune with Ray Train (TRL SFT, SimPO or DPO; LoRA or full) and write a merged model.

    Checkpoints go under OUT_DIR/<method>-<hash>/ray-train; re-running the same command resumes
    from the latest one, and a finished run is skipped. Uses the cluster in RAY_ADDRESS when set.
    """
    from raysynth.config import ConfigError, load_train_config
    from raysynth.models import ModelNotFoundError, resolve_model
    from raysynth.train.data import TrainDataError, check_columns

    try:
        job = load_train_config(config, set_)
        model_dir = resolve_model(job.model)
        check_columns(job.data, job.train.method)
    except (ConfigError, TrainDataError) as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2)
    except ModelNotFoundError as exc:
        typer.echo(f"config error: {config}: field 'model': {exc}", err=True)
        raise typer.Exit(2)

    from raysynth.pipeline import init_ray
    from raysynth.train import train_model

    init_ray()
    out = train_model(job.train, job.data, job.model, model_dir, job.out_dir, job.trust_remote_code)
    typer.echo(f"\nmerged model: {out}")


@app.command()
def status(run_dir: Path = typer.Argument(..., help="A run directory")) -> None:
    """Per stage: rows in/out, rows dropped by reason, tokens, seconds, rows/s, tokens/s."""
    from raysynth.status import print_status

    if not run_dir.is_dir():
        typer.echo(f"error: {run_dir}: no such run directory", err=True)
        raise typer.Exit(2)
    print_status(run_dir)


@app.command()
def model(name: str = typer.Argument("smollm2-135m", help="Model name, local directory or hub id")) -> None:
    """Resolve a model (converting the embedded one on first use) and print its directory."""
    from raysynth.models import resolve_model

    typer.echo(resolve_model(name))


def _dump_yaml(cfg) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":
    main()
