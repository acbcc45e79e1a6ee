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
