"""Run stages through Ray Data and commit them in the stage store.

An LLM stage is one streaming Ray Data pipeline over the inputs not yet committed:
  read parquet -> build prompts (tasks) -> engine (actors) -> parse + commit (tasks)
The engine actors are kept alive from one stage to the next while the model stays the same
(the run's `EnginePool`, raysynth/engine_pool.py), or, with `engine.keep_alive: false`, are a Ray Data actor pool of the stage.
Each commit task writes its batch's kept and rejected rows and a marker naming the inputs it
covers, so a killed run loses at most the batches in flight and never duplicates a row. A batch the
machinery fails (engine died or hung, endpoint down) is redone, never rejected (raysynth/faults.py);
past its retries the stage raises StageFailed and a re-run resumes it.
The driver only sees one small stats row per batch, for the progress bar.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
from tqdm import tqdm

from raysynth.config import EngineConfig, SamplingConfig
from raysynth.engine import actor_runtime_env
from raysynth.engine_pool import ask_loads, wait_until_ready
from raysynth.faults import MachineryFailure, StageFailed, root_message
from raysynth.hashing import id_hashes, row_id, stable_hash
from raysynth.steps import LLMStep, Rejection
from raysynth.store import LINEAGE, RunDir, StageDir, atomic_write_json

# Templating, forwarding to an engine, parsing: a fraction of a CPU each, so they never wait
# behind the engines' reserved CPUs.
LIGHT_TASK_CPUS = 0.25
# A task that hands a batch to a kept engine and waits for it: one per batch in flight.
WAITING_TASK_CPUS = 0.01
ENGINE_COLUMNS = ["prompt_messages", "completions", "finish_reasons", "tokens_in", "tokens_out", "engine_error"]


@dataclass(frozen=True)
class Lineage:
    recipe: str
    iteration: int
    model: str

    def columns(self, stage: str, template: str = "", template_hash: str = "") -> dict[str, Any]:
        """The lineage columns every row a stage writes carries (ids added per row)."""
        return {"recipe": self.recipe, "iteration": self.iteration, "stage": stage, "model": self.model,
                "template": template, "template_hash": template_hash}


def log_to_file(path: Path) -> None:
    """The driver's log lines (Ray's, Ray Data's) and Python warnings go to `path`, not the console,
    which keeps our progress bars and tables. The actors' own output never reaches the driver
    (`log_to_driver=False`): vLLM's log lines go to engines.log beside `path` (`init_ray`), the rest
    (training workers, stray prints) stays in Ray's session directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)  # Ray Data logs at DEBUG: its operator statistics, thousands of lines
    logging.getLogger().addHandler(handler)
    # Ray's logger stops its lines at itself (propagate off, a console handler that init_ray has Ray
    # clear): they go on to the file's handler instead.
    ray_logger = logging.getLogger("ray")
    ray_logger.setLevel(logging.INFO)
    ray_logger.propagate = True
    # Ray Data gives its logger a console handler of its own (and a file in Ray's session directory)
    # when imported, and does not pass lines on: its console handler gives way to ours.
    import ray.data  # sets up that logger when first imported

    data_logger = logging.getLogger(ray.data.__name__)
    for console in [h for h in data_logger.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]:
        data_logger.removeHandler(console)
    data_logger.addHandler(handler)
    logging.captureWarnings(True)


ENGINE_LOG = "engines.log"


def vllm_logging_config(log_dir: Path) -> Path:
    """A logging config (Python's dictConfig, as JSON) that sends vLLM's log lines to
    `log_dir/engines.log` instead of the process's stdout: vLLM reads it from VLLM_LOGGING_CONFIG_PATH
    in every process it starts (engine actors, their engine-core processes). Beside the run dir's
    driver log, on the storage every node reads."""
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    config = {"version": 1, "disable_existing_loggers": False,
              "formatters": {"engine": {"format": "%(asctime)s %(levelname)s pid=%(process)d "
                                                  "[%(filename)s:%(lineno)d] %(message)s"}},
              "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log_dir / ENGINE_LOG),
                                    # opened at the first line, not when vLLM is imported
                                    "delay": True, "formatter": "engine", "level": "INFO"}},
              "loggers": {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}}
    path = log_dir / "vllm-logging.json"
    atomic_write_json(path, config)
    return path


def init_ray(log_file: Path | None = None) -> None:
    """Join the cluster in RAY_ADDRESS when set, otherwise start a local Ray; with `log_file`, the
    driver logs there (`log_to_file`) and the engines' vLLM lines go to engines.log beside it."""
    env_vars = {"TOKENIZERS_PARALLELISM": "false"}
    if log_file is not None:
        log_to_file(log_file)
        env_vars["VLLM_LOGGING_CONFIG_PATH"] = str(vllm_logging_config(log_file.parent))
    if not ray.is_initialized():
        # configure_logging=False: Ray's logger keeps no console handler and passes its lines on to
        # the file's handler. The job's env_vars reach every actor (merged with an actor's own).
        ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False, configure_logging=log_file is None,
                 runtime_env={"env_vars": env_vars})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar per stage from the driver instead of one per operator
    # Parquet through Ray Data's V1 datasource: it streams a block per row group from the first
    # file on, where V2 (ListFiles -> ReadFiles) packed a 1,000,000-row stage into two blocks and
    # gave its first batch after 2-3.4 s against 0.1-0.25 s (bench/resume.py: the start-up of a resume).
    ctx.use_datasource_v2 = False
    # Rows reach the batcher in read order, so batches (and their sampling seeds) do not depend on
    # which read task finished first.
    ctx.execution_options.preserve_order = True
    # An actor pool's batch that fails for the machinery is redone (bounded by the pool's
    # max_task_retries), like one whose actor died; any other error fails the stage at once. Ray
    # matches the exception the task raises, so UDF errors must not be wrapped in UserCodeException.
    ctx.raise_original_map_exception = True
    ctx.actor_task_retry_on_errors = [MachineryFailure]


def carried_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A row's own columns, carried forward to the rows made from it."""
    return {k: v for k, v in row.items() if k not in LINEAGE and k not in ENGINE_COLUMNS}


def build_prompts(batch: pd.DataFrame, step: LLMStep, template: str) -> pd.DataFrame:
    batch = batch.copy()
    messages = []
    for row in batch.to_dict("records"):
        try:
            messages.append(json.dumps(step.build(row, template)))
        except Exception as exc:  # a bad input row becomes an engine-side rejection
            messages.append(json.dumps({"build_error": f"{type(exc).__name__}: {exc}"}))
    batch["prompt_messages"] = messages
    return batch


def parse_and_commit(batch: pd.DataFrame, step: LLMStep, stage_dir: str, lineage: Lineage,
                     template_hash: str) -> pd.DataFrame:
    stage = StageDir(stage_dir)
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    base = lineage.columns(step.name, f"{step.recipe}/{step.template_name}", template_hash)
    tokens_in = int(batch["tokens_in"].sum()) if len(batch) else 0
    tokens_out = int(batch["tokens_out"].sum()) if len(batch) else 0
    for row in batch.to_dict("records"):
        parent = row["id"]
        if row["engine_error"]:
            reason = row["engine_error"].split(":", 1)[0]
            rejected.append({**base, "id": row_id(parent, step.name, -1), "parent_id": parent,
                             "reason": reason, "raw": row["engine_error"]})
            continue
        index = 0
        for k, (text, finish) in enumerate(zip(row["completions"], row["finish_reasons"])):
            try:
                made = step.parse(text, row)
            except Rejection as rej:
                reason = rej.reason + ("_truncated" if finish == "length" else "")
                rejected.append({**base, "id": row_id(parent, step.name, -1 - k), "parent_id": parent,
                                 "reason": reason, "raw": text})
                continue
            except Exception as exc:  # a parser bug must not lose the batch either
                rejected.append({**base, "id": row_id(parent, step.name, -1 - k), "parent_id": parent,
                                 "reason": "parse_error", "raw": f"{type(exc).__name__}: {exc}\n{text}"})
                continue
            for new in made:
                kept.append({**carried_columns(row), **new, **base, "id": row_id(parent, step.name, index),
                             "parent_id": parent, "sample": k,
                             "tokens_in": row["tokens_in"], "tokens_out": row["tokens_out"]})
                index += 1
    reasons: dict[str, int] = {}
    for item in rejected:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    stats = {"rows_in": len(batch), "rows_out": len(kept), "rejected": reasons,
             "tokens_in": tokens_in, "tokens_out": tokens_out}
    stage.commit_batch(list(batch["id"]), pd.DataFrame(kept), pd.DataFrame(rejected), stats)
    return pd.DataFrame([{"rows_in": len(batch), "rows_out": len(kept), "tokens_out": tokens_out}])


def _progress(total: int | None, done: int, label: str) -> tqdm:
    return tqdm(total=total, initial=done, desc=label, unit="row", dynamic_ncols=True,
                mininterval=1.0, disable=os.environ.get("RAYSYNTH_NO_PROGRESS") == "1")


def run_stage(run: RunDir, iteration: int, name: str, identity: dict[str, Any], source: StageDir,
              batch_size: int, label: str, add_ops: Callable[[Any, StageDir], Any]) -> StageDir:
    """Skip if committed, else stream the source's uncommitted rows through `add_ops` (which ends
    in a commit task yielding one stats row per batch) and commit the stage when all are done."""
    stage = open_stage(run, iteration, name, identity)
    if stage.committed:
        return stage
    files = source.part_files()
    total = source.rows_out()
    read = (lambda: ray.data.read_parquet(files)) if files else None
    _stream(stage, read, total, batch_size, label, add_ops)
    return finish_stage(run, stage, identity, total)


def run_read_stage(run: RunDir, iteration: int, name: str, identity: dict[str, Any], read: Callable[[], Any],
                   batch_size: int, label: str, add_ops: Callable[[Any, StageDir], Any]) -> StageDir:
    """`run_stage` over rows read from outside the run (a corpus of any size): `read()` gives a
    Dataset whose rows carry a stable `id`; the total is known only when the stream has ended."""
    stage = open_stage(run, iteration, name, identity)
    if stage.committed:
        return stage
    _stream(stage, read, None, batch_size, label, add_ops, unique_ids=True)
    return finish_stage(run, stage, identity, stage.done_count())


def one_row_per_id(batch: pd.DataFrame) -> pd.DataFrame:
    """The first row of each id, with `copies`: how many rows had it (all copies are in the batch)."""
    copies = batch.groupby("id", sort=False)["id"].transform("size")
    return batch.assign(copies=copies).drop_duplicates("id")


def _stream(stage: StageDir, read: Callable[[], Any] | None, total: int | None, batch_size: int, label: str,
            add_ops: Callable[[Any, StageDir], Any], unique_ids: bool = False) -> None:
    # The committed inputs, as sorted 64-bit hashes, are made by a task straight into the object
    # store: the driver never holds them, and every filter task reads them there (zero-copy on its
    # node) instead of carrying a set of every id.
    done, done_count, said = committed_inputs.remote(StageDir(stage.path.resolve()))
    done_count, said = ray.get([done_count, said])
    for line in said:
        print(line)
    started, session = time.time(), f"{os.getpid()}-{time.time():.0f}"
    bar = _progress(total, done_count, label)
    if read is not None and (total is None or done_count < total):
        ds = read()
        if done_count:
            ds = ds.map_batches(NotCommitted(done), batch_format="pyarrow", batch_size=None)
        if unique_ids:
            # Rows from outside the run may repeat (a corpus with a line twice has one id twice): a hash
            # shuffle on the id brings the copies of each id into one block, where one row is kept and
            # the number of copies recorded, so every id is committed once. The batches' composition
            # then varies from run to run: steps of such a stage must depend on the row, not the batch.
            partitions = max(8, 2 * int(ray.cluster_resources().get("CPU", 1)))
            ds = ds.repartition(partitions, keys=["id"]).map_batches(one_row_per_id, batch_format="pandas",
                                                                     batch_size=None)
        # Blocks of exactly batch_size rows, cut from the rows in their read order (init_ray preserves
        # it): an actor emits a block only when all of it is processed, so the block is the unit of
        # commit and of work lost to a crash. Committed batches are whole such blocks, so the rows
        # left after the resume filter are cut into the very batches an uninterrupted run makes, and a
        # batch's seed (its row ids) draws the same samples.
        ds = add_ops(ds.repartition(target_num_rows_per_block=batch_size, strict=True), stage)
        try:
            for stats in ds.iter_rows():
                bar.update(int(stats["rows_in"]))
                stage.record_time(session, started)
        except Exception as exc:  # retries are spent: one message, what is committed stays
            bar.close()
            stage.record_time(session, started)
            (stage.path / "_error.txt").write_text(traceback.format_exc())
            committed = stage.done_count()
            of = f" of {total}" if total is not None else ""
            raise StageFailed(f"{stage.path.parent.name}/{stage.name}: {root_message(exc)}; {committed}{of} input "
                              f"rows are committed and stay (full error: {stage.path / '_error.txt'})") from exc
    bar.close()
    stage.record_time(session, started)


@ray.remote(num_cpus=0, num_returns=3)
def committed_inputs(stage: StageDir) -> tuple[np.ndarray, int, list[str]]:
    """One pass over a stage's markers (its damaged batches uncommitted on the way): the committed
    inputs' hashes, their count, and what was said. No CPU asked: engines may hold every one."""
    said: list[str] = []
    done = stage.done_hashes(say=said.append)
    return done, len(done), said


class NotCommitted:
    """`map_batches` function: the batch's rows whose id is not among the committed inputs, given as
    sorted 64-bit hashes (an object ref, fetched once per task; or the array itself). Whole batches at
    a time (Arrow in, Arrow out): a row-wise `filter` cost ~10 us a row in Ray's per-row dicts alone.
    Two ids share a hash with odds of about 1e-7 at a million rows on each side."""

    def __init__(self, done: Any):
        self.ref, self.done = (done, None) if isinstance(done, ray.ObjectRef) else (None, done)

    def __call__(self, batch: Any) -> Any:
        if self.done is None:
            self.done = ray.get(self.ref)
        hashed = id_hashes(batch.column("id").to_pylist())
        at = np.minimum(np.searchsorted(self.done, hashed), max(len(self.done) - 1, 0))
        committed = self.done[at] == hashed if len(self.done) else np.zeros(len(hashed), dtype=bool)
        return batch.filter(pa.array(~committed))


def run_llm_stage(run: RunDir, iteration: int, step: LLMStep, source: StageDir, engine: EngineConfig,
                  model_dir: str, lineage: Lineage) -> StageDir:
    """Run `step` over the committed rows of `source`; skip if committed, resume if partial."""
    identity = {"step": step.identity(), "model": lineage.model, "input": source.name,
                "engine": engine.model_dump(include={"model", "dtype", "max_model_len", "trust_remote_code"}),
                # Only when not the default, so that the stages of existing runs keep their names.
                **({"prompt_format": engine.prompt_format} if engine.prompt_format != "chat" else {}),
                **({"endpoint": engine.endpoint.model_dump(include={"base_url", "model"})} if engine.endpoint else {})}

    def add_ops(ds, stage: StageDir):
        prompts = {"fn_kwargs": {"step": step, "template": step.template}, "batch_format": "pandas",
                   "batch_size": engine.batch_size}
        step_args = {"sampling": step.sampling, "regex": step.regex, "json_schema": step.json_schema}
        if engine.endpoint is None and engine.keep_alive:
            roster = run.engines.roster(engine, model_dir)
            # One waiting task per batch in flight on as many engines as the pool may grow to hands its
            # batch to the least-loaded kept engine; batches beyond the engines' slots wait in them,
            # which is what grows the pool.
            ds = ds.map_batches(build_prompts, num_cpus=LIGHT_TASK_CPUS, **prompts)
            ds = ds.map_batches(generate_on_engines, batch_format="pandas", batch_size=engine.batch_size,
                                num_cpus=WAITING_TASK_CPUS,
                                compute=ray.data.TaskPoolStrategy(size=engine.batches_in_flight * engine.concurrency[1]),
                                fn_kwargs={"roster": roster, "engine": engine, **step_args})
        else:
            ds = ds.map_batches(build_prompts, **prompts)
            # A vLLM actor works on batches_in_flight batches at once (threads calling one engine).
            in_flight = 1 if engine.endpoint else engine.batches_in_flight
            ds = ds.map_batches(
                _engine_class(engine), batch_format="pandas", batch_size=engine.batch_size,
                compute=ray.data.ActorPoolStrategy(min_size=engine.concurrency[0], max_size=engine.concurrency[1],
                                                   max_concurrent_calls_per_actor=in_flight,
                                                   enable_true_multi_threading=in_flight > 1),
                num_cpus=engine.endpoint.num_cpus if engine.endpoint else engine.num_cpus,
                num_gpus=0 if engine.endpoint else engine.num_gpus, resources={} if engine.endpoint else engine.resources,
                # Bounded: Ray Data's default restarts a dead actor and retries its batch forever.
                max_restarts=engine.max_restarts, max_task_retries=engine.batch_retries,
                fn_constructor_kwargs={"engine": engine, "model_dir": model_dir, **step_args},
                **actor_runtime_env(engine))
        return ds.map_batches(parse_and_commit, batch_format="pandas", batch_size=None, num_cpus=LIGHT_TASK_CPUS,
                              fn_kwargs={"step": step, "stage_dir": str(stage.path), "lineage": lineage,
                                         "template_hash": step.template_hash})

    return run_stage(run, iteration, step.name, identity, source, engine.batch_size,
                     f"{lineage.recipe}/{step.name}", add_ops)


def _engine_class(engine: EngineConfig):
    if engine.endpoint is not None:
        from raysynth.endpoint import EndpointStage

        return EndpointStage
    from raysynth.engine import VLLMStage  # imported lazily: vllm is heavy, and only actors need it

    return VLLMStage


def generate_on_engines(batch: pd.DataFrame, roster: Any, engine: EngineConfig, sampling: SamplingConfig,
                        regex: str | None, json_schema: dict | None) -> pd.DataFrame:
    """One batch generated on the least-loaded kept engine of the pool's roster now (the fewest rows
    held; the draws do not depend on which). An engine that died, failed or passed its deadline is
    restarted and the batch redone, on the least-loaded engine then, up to `engine.batch_retries`
    times; then MachineryFailure, never rejected rows."""
    from raysynth.engine import batch_seed

    seed = batch_seed(sampling.seed, batch)
    deadline = engine.batch_timeout_s + engine.batch_timeout_s_per_token * len(batch) * sampling.n * sampling.max_tokens
    failures = []
    for attempt in range(engine.batch_retries + 1):
        actor, hung = least_loaded(ray.get(roster.get.remote())), False
        try:
            return ray.get(actor.generate.remote(batch, sampling, regex, json_schema, seed), timeout=deadline)
        except ray.exceptions.GetTimeoutError:
            failures.append(f"no answer within {deadline:.0f} s")
            hung = True
        except ray.exceptions.RayTaskError as exc:  # the engine failed: its process exits, Ray restarts it
            failures.append(root_message(exc))
        except ray.exceptions.RayActorError as exc:  # the process died: Ray restarts it if it may
            failures.append(f"engine actor died ({type(exc).__name__})")
        if attempt == engine.batch_retries:
            break
        if hung:  # a restart counts against the actor's max_restarts
            ray.kill(actor, no_restart=False)
        print(f"[retry] a batch of {len(batch)} rows: {failures[-1]}; attempt {attempt + 2} of "
              f"{engine.batch_retries + 1}", flush=True)
        time.sleep(min(30.0, 2.0 ** attempt))
        wait_until_ready(actor, engine.batch_timeout_s)
    raise MachineryFailure(f"a batch of {len(batch)} rows failed {len(failures)} times on its engine: "
                           + "; ".join(failures))


def least_loaded(actors: list[Any]) -> Any:
    """The engine holding the fewest rows; a dead or restarting engine counts as full."""
    if len(actors) == 1:
        return actors[0]
    loads = [rows for rows, _ in ask_loads(actors)]
    return actors[loads.index(min(loads))]


def open_stage(run: RunDir, iteration: int, name: str, identity: dict[str, Any], quiet: bool = False) -> StageDir:
    """The stage's directory: left alone when already committed (the caller skips it), else
    prepared for writing (leftovers of an interrupted run removed). Batches whose files no longer
    match their markers are uncommitted first, so they are recomputed. Raises StopRequested first when
    the run was asked to stop after a stage that is now committed."""
    run.check_stop()
    stage = run.stage(iteration, name, identity)
    if stage.committed:
        stage.uncommit_damaged()  # sizes from the manifest; a partial stage's batches are checked in done_hashes
    if stage.committed:
        if not quiet:
            print(f"[skip] {stage.path} (committed)")
        run.check_kept(stage)
    else:
        stage.prepare(identity)
    return stage


def commit_decisions(stage: StageDir, name: str, lineage: Lineage, rows: list[dict[str, Any]],
                     reasons: list[str | None], raws: list[str], extra: list[dict[str, Any]] | None = None) -> int:
    """Commit one batch of keep/drop decisions made on existing rows: a row with a reason goes to the
    rejected table (with `raw`), the others are kept with their columns; `extra` columns (e.g.
    scores) go to both. Returns the number kept."""
    base = lineage.columns(name)
    extra = extra or [{} for _ in rows]
    kept, rejected, counts = [], [], {}
    for row, reason, raw, more in zip(rows, reasons, raws, extra):
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
            rejected.append({**base, **more, "id": row_id(row["id"], name, -1), "parent_id": row["id"],
                             "reason": reason, "raw": raw})
        else:
            kept.append({**carried_columns(row), **more, **base, "id": row_id(row["id"], name, 0),
                         "parent_id": row["id"]})
    stage.commit_batch([row["id"] for row in rows], pd.DataFrame(kept), pd.DataFrame(rejected),
                       {"rows_in": len(rows), "rows_out": len(kept), "rejected": counts,
                        "tokens_in": 0, "tokens_out": 0})
    return len(kept)


def run_decision_stage(run: RunDir, iteration: int, name: str, identity: dict[str, Any], source: StageDir,
                       decide: Callable[[pd.DataFrame], list[str | None]], raw_column: str, lineage: Lineage,
                       extra_columns: tuple[str, ...] = ()) -> StageDir:
    """Keep or drop each committed row of `source` on the driver: `decide(rows in id order)` gives a
    reason to drop, or None to keep, per row. For decisions that need all rows at once (novelty,
    clustering); `extra_columns` of the source are carried into the rejected table too."""
    stage = open_stage(run, iteration, name, identity)
    if stage.committed:
        return stage
    frame = source.read()
    if len(frame):  # an empty source (every row dropped before) has no columns and nothing to decide
        frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    rows = frame.to_dict("records")
    extra = [{c: row[c] for c in extra_columns} for row in rows]
    reasons = decide(frame) if rows else []
    commit_decisions(stage, name, lineage, rows, reasons, [str(row[raw_column]) for row in rows], extra)
    return finish_stage(run, stage, identity, len(rows))


def finish_stage(run: RunDir, stage: StageDir, identity: dict[str, Any], total: int) -> StageDir:
    """Commit the stage once every input is; a stage that kept nothing of a non-empty input stops the
    run there (on_empty: stop), the stage stays committed."""
    missing = total - stage.done_count()
    if missing:
        raise RuntimeError(f"{stage.path}: {missing} input rows were not committed; re-run to resume")
    manifest = stage.commit(identity)
    print(f"[done] {stage.name}: {manifest['rows_in']} in, {manifest['rows_out']} out, "
          f"rejected {manifest['rejected'] or 0}")
    run.check_kept(stage)
    return stage


def write_source_stage(run: RunDir, iteration: int, name: str, rows: list[dict[str, Any]],
                       identity: dict[str, Any], lineage: Lineage) -> StageDir:
    """A stage made on the driver from a small, fully known source (e.g. tag tree x task types)."""
    stage = open_stage(run, iteration, name, identity, quiet=True)
    if stage.committed:
        return stage
    base = {**lineage.columns(name), "parent_id": ""}
    frame = pd.DataFrame([{**row, **base, "id": row_id(stable_hash(row, 16), name, 0)} for row in rows],
                         columns=None if rows else ["id"])
    stage.commit_batch(list(frame["id"]), frame, pd.DataFrame(),
                       {"rows_in": len(rows), "rows_out": len(rows), "rejected": {}, "tokens_in": 0,
                        "tokens_out": 0})
    return finish_stage(run, stage, identity, len(rows))
