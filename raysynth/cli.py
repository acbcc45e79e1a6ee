"""raysynth command line: run a recipe, inspect a run."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

app = typer.Typer(
    help="raysynth: synthetic data for LLM self-improvement on Ray (Condor, SynPO, I-SHEEP, REFED).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run config (YAML), e.g. configs/synpo-small.yaml, configs/condor-small.yaml, configs/isheep-small.yaml"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where stages are stored; overrides run_dir. "
                                           "Re-running on the same dir skips committed stages and resumes."),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set engine.batch_size=32 (repeatable)"),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="Stop once this stage is committed, e.g. "
                                             "iter-01/answer (see `raysynth status`); re-run without it to go on."),
) -> None:
    """Run a recipe end to end. Uses the Ray cluster in RAY_ADDRESS when set, else starts a local Ray.

    Exit codes: 0 done (or stopped as asked); 2 a bad config, or another driver holds the run dir;
    3 a stage kept nothing of a non-empty input (on_empty: stop); 4 a stage failed past its retries.
    Every stop keeps what was committed: re-running resumes."""
    from raysynth.models import resolve_model
    from raysynth.recipes import load_config

    overrides = list(set_) + ([f"run_dir={run_dir}"] if run_dir else []) + ([f"stop_after={stop_after}"] if stop_after else [])
    with _exit_on_user_error(model_field=f"{config}: field 'engine.model'"):
        cfg = load_config(config, overrides)
        resolve_model(cfg.engine.model)  # fail before anything is written
    if getattr(cfg, "student_model", None):
        with _exit_on_user_error(model_field=f"{config}: field 'student_model'"):
            resolve_model(cfg.student_model)

    from raysynth.runlock import RunLock, RunLocked

    lock = RunLock(cfg.run_dir)
    try:
        lock.acquire()
    except RunLocked as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    try:
        _run_holding_the_lock(cfg, lock)
    finally:
        lock.release()


def _run_holding_the_lock(cfg, lock) -> None:
    import ray

    from raysynth.faults import StageFailed
    from raysynth.pipeline import ENGINE_LOG, init_ray
    from raysynth.recipes import RECIPES
    from raysynth.status import print_status
    from raysynth.store import RUN_CONFIG, NothingKept, StopRequested, atomic_write_bytes

    atomic_write_bytes(cfg.run_dir / RUN_CONFIG, _dump_yaml(cfg).encode())
    started = time.time()
    log_file = cfg.run_dir / "logs" / "driver.log"
    init_ray(log_file)
    typer.echo(f"Ray's and warnings' log lines: {log_file}; vLLM's: {log_file.parent / ENGINE_LOG} (the training "
               "workers' own logs: Ray's session directory, /tmp/ray/session_latest/logs on a local run)")
    _one_message_per_failure()
    lock.note_ray_job(ray.get_runtime_context().get_job_id())
    try:
        result = RECIPES[cfg.recipe].run(cfg)
    except StopRequested as stop:
        print_status(cfg.run_dir)
        typer.echo(f"\n[stop] {stop}: stopped as asked (--stop-after). Re-run without it to go on.")
        return
    except StageFailed as failed:
        typer.echo(f"\nerror: stage {failed}. The batches it could not do were retried and not committed; "
                   f"fix the cause, then resume: raysynth run {cfg.run_dir / RUN_CONFIG}", err=True)
        raise typer.Exit(4)
    except NothingKept as empty:
        print_status(cfg.run_dir)
        saved = cfg.run_dir / RUN_CONFIG
        typer.echo(f"\nerror: {empty}. Nothing after it can run on no rows. See why in the stage's rejected rows "
                   f"(raysynth status {cfg.run_dir}, raysynth report {cfg.run_dir}); change the settings that dropped "
                   f"them and re-run, or go on with it empty: raysynth run {saved} --set on_empty=continue", err=True)
        raise typer.Exit(3)
    print_status(cfg.run_dir)
    if cfg.stop_after:
        typer.echo(f"note: no stage {cfg.stop_after} was reached; the run went to its end (see raysynth status)")
    if "jsonl" in result:
        typer.echo(f"\n{result['rows']} samples in {result['jsonl']}\n(and {result['parquet']})")
    for step in result.get("iterations", []):
        typer.echo(f"iteration {step['iteration']}: " + ", ".join(f"{n} {what}" for what, n in step["funnel"].items())
                   + (f"; model {step['model']}" if step.get("model") else ""))
        if step.get("verdict"):
            typer.echo(f"  {step['verdict']}")
    if result.get("model"):
        typer.echo(f"fine-tuned model: {result['model']}" + (f"\n  {result['verdict']}" if result.get("verdict") else ""))
    if result.get("stopped"):
        typer.echo(result["stopped"])
    from raysynth.registry import read_registry

    champion = read_registry(cfg.run_dir).current_entry()
    if champion is not None:
        typer.echo(f"the run's champion (what raysynth serve --run-dir {cfg.run_dir} serves): {champion.name}; "
                   f"every model and verdict: raysynth models {cfg.run_dir}")
    typer.echo(f"{time.time() - started:.0f} s; see it all with: raysynth report {cfg.run_dir}")


@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML), e.g. configs/train-sft-small.yaml"),
    set_: List[str] = typer.Option([], "--set", help="Override a field: --set train.max_steps=20 (repeatable)"),
) -> None:
    """Fine-tune with Ray Train (TRL SFT, SimPO or DPO; LoRA or full) and write a merged model.

    Checkpoints go under OUT_DIR/<method>-<hash>/ray-train; re-running the same command resumes
    from the latest one, and a finished run is skipped. Uses the cluster in RAY_ADDRESS when set.
    """
    from raysynth.config import load_train_config
    from raysynth.models import resolve_model
    from raysynth.train.data import TrainDataError, check_columns

    with _exit_on_user_error(model_field=f"{config}: field 'model'", config_errors=(TrainDataError,)):
        job = load_train_config(config, set_)
        model_dir = resolve_model(job.model)
        check_columns(job.data, job.train.method)

    from raysynth.pipeline import init_ray
    from raysynth.train import train_model

    init_ray()
    out = train_model(job.train, job.data, job.model, model_dir, job.out_dir, job.trust_remote_code, job.prompt_format)
    typer.echo(f"\nmerged model: {out}")


def _one_message_per_failure() -> None:
    """A stage that fails is reported once, by raysynth (its full traceback goes to the stage's
    _error.txt): Ray Data's console copy of the error and its stack is dropped; its log file keeps it."""
    import logging

    class DropErrors(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno < logging.ERROR

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.addFilter(DropErrors())


@app.command()
def status(
    run_dir: Path = typer.Argument(..., help="A run directory"),
    verify: bool = typer.Option(False, "--verify", help="Re-hash every committed file against its batch's "
                                "marker and name each damaged batch (exit 1 if any); a re-run redoes them"),
) -> None:
    """Per stage: rows in/out, rows dropped by reason, tokens, seconds, rows/s, tokens/s."""
    from raysynth.status import print_status, verify_run

    if not run_dir.is_dir():
        typer.echo(f"error: {run_dir}: no such run directory", err=True)
        raise typer.Exit(2)
    print_status(run_dir)
    if verify:
        damaged = verify_run(run_dir)
        for stage, key, problem in damaged:
            typer.echo(f"damaged: {stage} batch {key}: {problem}")
        typer.echo(f"verify: {len(damaged)} damaged batch(es)" + ("; `raysynth run` with the run's config "
                   "recomputes them" if damaged else ": every committed file matches its checksum"))
        raise typer.Exit(1 if damaged else 0)


@contextmanager
def _exit_on_user_error(model_field: str | None = None, config_errors: tuple[type[Exception], ...] = ()):
    """A bad config or a model that is not there: one line on stderr, exit code 2, nothing started.
    `model_field` names where a missing model came from in a config file ("FILE: field 'model'");
    `config_errors` are other errors already phrased like config errors."""
    from raysynth.config import ConfigError
    from raysynth.models import ModelNotFoundError

    try:
        yield
    except (ConfigError, *config_errors) as exc:
        typer.echo(f"config error: {exc}", err=True)
        raise typer.Exit(2)
    except ModelNotFoundError as exc:
        typer.echo(f"config error: {model_field}: {exc}" if model_field else f"error: {exc}", err=True)
        raise typer.Exit(2)


def _run_model(run_dir: Path, name: str) -> tuple[str, int | None]:
    """A model registered in the run (models.json), else `name` itself."""
    from raysynth.registry import read_registry

    entry = read_registry(run_dir).models.get(name)
    return (entry.path, entry.iteration) if entry else (name, None)


@app.command("eval")
def eval_(
    model: str = typer.Argument("smollm2-135m", help="The embedded default, a model registered in the run "
                                "(e.g. condor-iter-01, see RUN_DIR/models.json), a model directory or a hub id"),
    run_dir: Path = typer.Option(Path("runs/eval"), "--run-dir", help="Run to store answers and results in; "
                                 "re-running resumes and reuses answers already generated"),
    iteration: Optional[int] = typer.Option(None, help="Iteration to file the result under (eval/iter-NN.json); "
                                            "default: the registered model's iteration, else 0"),
    baseline: Optional[str] = typer.Option(None, help="Model to judge against (win rate); none: no win rate"),
    limit: Optional[int] = typer.Option(100, help="First N IFEval prompts; 0: all 541"),
    max_tokens: int = typer.Option(512, help="Tokens per answer (greedy decoding)"),
    set_: List[str] = typer.Option([], "--set", help="Override an eval setting: --set judge_model=DIR (repeatable)"),
) -> None:
    """Evaluate a model: IFEval prompt/instruction accuracy (strict and loose), win rate against a
    baseline (pairwise judge, both orders), each with a bootstrap 95% interval."""
    from raysynth.config import EngineConfig, EvalConfig, load_section
    from raysynth.models import resolve_model
    from raysynth.store import RUN_CONFIG, saved_run_config

    path, registered_iteration = _run_model(run_dir, model)
    base = {"limit": limit or None, "generation": {"temperature": 0.0, "max_tokens": max_tokens, "structured": False}}
    with _exit_on_user_error():
        cfg = load_section(EvalConfig, base, set_, "raysynth eval")
        engine = load_section(EngineConfig, saved_run_config(run_dir).get("engine", {}), [], f"{run_dir}/{RUN_CONFIG}")
        resolve_model(path)
        if baseline:
            resolve_model(_run_model(run_dir, baseline)[0])

    from raysynth.eval import eval_path, evaluate
    from raysynth.pipeline import init_ray
    from raysynth.store import RunDir

    init_ray()
    it = iteration if iteration is not None else (registered_iteration or 0)
    result = evaluate(RunDir(run_dir), it, path, engine, cfg, baseline=_run_model(run_dir, baseline)[0] if baseline else None)
    _print_eval(result)
    typer.echo(f"\nresults: {eval_path(RunDir(run_dir), it)}")


def _print_eval(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"eval of {result['model']} (iteration {result['iteration']})")
    for column in ("metric", "value", "95% interval", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    metrics = {f"IFEval {k.replace('_', ' ')}": v for k, v in result["ifeval"].items()}
    if "winrate" in result:
        metrics[f"win rate vs {result['winrate']['baseline']}"] = result["winrate"]["win_rate"]
    for name, m in metrics.items():
        table.add_row(name, f"{m['value']:.3f}", f"[{m['low']:.3f}, {m['high']:.3f}]", str(m["n"]))
    Console(width=160).print(table)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory")) -> None:
    """Write RUN_DIR/report.html (one self-contained page: evaluation per iteration with intervals,
    rows and throughput per stage, drop reasons, training loss, samples before/after refinement)
    and RUN_DIR/summary.md."""
    from raysynth.report import build_report

    if not run_dir.is_dir():
        typer.echo(f"error: {run_dir}: no such run directory", err=True)
        raise typer.Exit(2)
    paths = build_report(run_dir)
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"report: {paths['html']}\nsummary: {paths['markdown']}")


@app.command()
def serve(
    config: Optional[Path] = typer.Argument(None, help="Serve settings (YAML), e.g. jobs/serve.yaml; optional"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Follow this run's current model (its "
                                           "registry, models.json) and switch when a recipe registers a new one"),
    model: Optional[str] = typer.Option(None, help="Serve this model (registered name, directory, hub id): "
                                        "registered in the run and made current"),
    host: Optional[str] = typer.Option(None, help="Bind address (default 127.0.0.1; any other address "
                                       "needs an API key)"),
    port: Optional[int] = typer.Option(None, help="Port (default 8000)"),
    set_: List[str] = typer.Option([], "--set", help="Override a serve setting: --set max_replicas=2"),
) -> None:
    """Serve the run's current model behind an OpenAI-compatible API (Ray Serve + vLLM):
    /v1/models, /v1/chat/completions, /v1/completions (stream=true: server-sent events), /health.

    Keys (read by the replicas from their environment or a file on each node): RAYSYNTH_API_KEY
    guards inference (required unless bound to loopback); RAYSYNTH_ADMIN_KEY turns on /admin/swap and
    /admin/status (off without it). Runs until Ctrl-C."""
    from raysynth.config import load_serve_config

    overrides = list(set_) + [f"{k}={v}" for k, v in (("run_dir", run_dir), ("model", model), ("host", host),
                                                        ("port", port)) if v is not None]
    with _exit_on_user_error():
        cfg = load_serve_config(config, overrides)
        from raysynth.serve import check_exposure, initial_model

        check_exposure(cfg)
        current = initial_model(cfg)

    from ray import serve as ray_serve

    from raysynth.pipeline import init_ray
    from raysynth.registry import REGISTRY
    from raysynth.serve import start_server

    init_ray()
    url = start_server(cfg)
    typer.echo(f"serving {current.name} at {url}/v1 (OpenAI-compatible); following "
               f"{cfg.run_dir / REGISTRY}. Ctrl-C to stop.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ray_serve.shutdown()


@app.command()
def swap(
    model: str = typer.Argument(..., help="A model registered in the run (raysynth models DIR)"),
    run_dir: Path = typer.Option(..., "--run-dir", help="The run the server follows"),
) -> None:
    """Switch a running `raysynth serve` to a registered MODEL (or roll back to an earlier one): the
    run's registry names it current; replicas load it, test it, and switch without dropping requests."""
    from raysynth.registry import REGISTRY, UnknownModel, make_current

    with _exit_on_user_error(config_errors=(UnknownModel,)):
        entry = make_current(run_dir, model)
    typer.echo(f"{run_dir / REGISTRY}: current -> {entry.name} ({entry.path})")


class _ModelsGroup(TyperGroup):
    """`raysynth models RUN_DIR` (no command named) lists the run's models, as `raysynth models list RUN_DIR`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and Path(args[0]).is_dir():
            args = ["list", *args]
        return super().resolve_command(ctx, args)


models_app = typer.Typer(cls=_ModelsGroup, no_args_is_help=True,
                         help="The models a run may serve (RUN_DIR/models.json): list them with their lineage, "
                         "status and verdicts (raysynth models RUN_DIR, or models list RUN_DIR), register a "
                         "directory.")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(
    run_dir_argument: Path | None = typer.Argument(None, metavar="[RUN_DIR]", help="A run directory"),
    run_dir_option: Path | None = typer.Option(None, "--run-dir", help="The same, as an option"),
) -> None:
    """Every model of the run: lineage (recipe, iteration, parent, training data, config hash), status
    (champion, retired, rolled back, candidate, rejected), the promotion gate's reason with the
    candidate's metrics against the champion it faced, and the champion timeline.
    raysynth models list RUN_DIR  (or --run-dir RUN_DIR)."""
    run_dir = run_dir_argument or run_dir_option
    if run_dir is None:
        raise typer.BadParameter("name the run directory: raysynth models list RUN_DIR")
    from rich.console import Console
    from rich.table import Table

    from raysynth.registry import read_registry

    registry = read_registry(run_dir)
    if not registry.models:
        typer.echo(f"{run_dir}: no registered models")
        return
    table = Table(title=f"models of {run_dir}", show_lines=True)
    for column in ("model", "iteration", "status", "parent", "trained on", "config", "verdict"):
        table.add_column(column, overflow="fold")
    for entry in registry.models.values():
        table.add_row(entry.name + (" *" if entry.name == registry.current else ""), str(entry.iteration),
                      entry.status, Path(entry.parent).name if entry.parent else "",
                      _short_path(entry.training_data, run_dir), entry.config_hash or "", entry.reason)
    console = Console(width=200)
    console.print(table)
    timeline = Table(title="champion timeline")
    for column in ("when", "model", "event", "why"):
        timeline.add_column(column, overflow="fold")
    for event in registry.timeline:
        timeline.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at)), event.model, event.event,
                         event.reason)
    console.print(timeline)


def _short_path(path: str | None, run_dir: Path) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return path


@app.command()
def promote(
    model: str = typer.Argument(..., help="A model registered in the run (raysynth models DIR)"),
    run_dir: Path = typer.Option(..., "--run-dir", help="The run (a running `raysynth serve` on it switches)"),
    reason: str = typer.Option("promoted by hand", help="Why, for the registry's timeline"),
) -> None:
    """Make MODEL the run's champion by hand, overriding the gate: the registry names it current and a
    running server switches to it without dropping requests."""
    from raysynth.registry import REGISTRY, UnknownModel, make_current

    with _exit_on_user_error(config_errors=(UnknownModel,)):
        entry = make_current(run_dir, model, "promoted", reason)
    typer.echo(f"{run_dir / REGISTRY}: champion -> {entry.name} ({entry.path})")


@app.command()
def rollback(
    run_dir: Path = typer.Option(..., "--run-dir", help="The run (a running `raysynth serve` on it switches)"),
    to: Optional[str] = typer.Option(None, "--to", help="Model to roll back to; default: the champion before "
                                     "the current one"),
    reason: str = typer.Option("rolled back by hand", help="Why, for the registry's timeline"),
) -> None:
    """Roll the run back to an earlier champion: the current one is marked rolled back, and a running
    server switches to the earlier model without dropping requests."""
    from raysynth.registry import REGISTRY, UnknownModel, make_current

    with _exit_on_user_error(config_errors=(UnknownModel,)):
        entry = make_current(run_dir, to, "rolled back", reason)
    typer.echo(f"{run_dir / REGISTRY}: champion -> {entry.name} ({entry.path}), rolled back")


@models_app.command("add")
def models_add(
    model: str = typer.Argument(..., help="A model directory, the embedded model's name or a hub id"),
    run_dir: Path = typer.Option(..., "--run-dir", help="The run to register it in"),
    name: Optional[str] = typer.Option(None, help="Model id to serve it under (default: the directory name)"),
    current: bool = typer.Option(False, "--current", help="Also make it current (a running server switches)"),
) -> None:
    """Register a model in the run so that `raysynth swap` and POST /admin/swap may serve it. Its weights
    are checked first (a truncated safetensors file is refused)."""
    from raysynth.models import check_checkpoint, resolve_model
    from raysynth.registry import REGISTRY
    from raysynth.serve import add_model

    with _exit_on_user_error():
        check_checkpoint(resolve_model(model))
        entry = add_model(run_dir, model, name, current=current)
    typer.echo(f"registered {entry.name} ({entry.path}) in {run_dir / REGISTRY}"
               + (" as current" if current else ""))


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
