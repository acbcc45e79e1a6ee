"""SynPO end to end on the real engine: two iterations of generator -> prompts -> answers -> improver
-> judged pairs -> SimPO -> evaluation, with the driver killed in the middle of iteration 1 and the
run resumed; then the report. One run, since each costs minutes on a 2-core CPU."""

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import (assert_resume_matches_uninterrupted, check_verdicts, kill_driver_when, partly_committed,
                      run_raysynth)
from raysynth.models import resolve_model
from raysynth.store import RunDir
from tiny_models import build_tiny_pairrm

pytestmark = pytest.mark.slow

# batch_size 2 so every stage has several batches to be killed between; greedy where the test compares.
# One example per training worker and step: on CPU a step's time grows with its tokens, and two
# steps show the training path as well as eight examples would.
TINY_SYNPO = """\
recipe: synpo
run_dir: {run_dir}
seed: 0
# At the paper's threshold a tiny iteration can lose all its pairs (iteration 2 kept 0 of 5 once): the
# run goes on with the pairs accumulated so far instead of stopping.
on_empty: continue
engine:
  model: smollm2-135m
  batch_size: 2
synpo:
  seed_limit: 8
  iterations: 2
  prompts_per_iteration: 6
  pairs_per_iteration: 4
  # PairRM at the paper's threshold (0.20) and repetition filter (50%): a tiny PairRM built by the test.
  scorer: {{kind: pairrm, model: {pairrm}, max_length: 128}}
  steps:
    generate_prompt: {{max_tokens: 48}}
    answer: {{max_tokens: 48}}
    improve: {{max_tokens: 64}}
  generator_train: {{max_steps: 2, save_steps: 2, per_device_batch_size: 1}}
  improver_train: {{max_steps: 2, save_steps: 2, per_device_batch_size: 1}}
train: {{method: simpo, max_steps: 2, save_steps: 2, per_device_batch_size: 1}}
eval:
  limit: 4
  generation: {{max_tokens: 48}}
  judge: {{pairwise: {{max_tokens: 64}}, max_explanation_chars: 80}}
"""

@pytest.fixture(scope="module")
def synpo_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synpo")
    run_dir = directory / "run"
    config = directory / "tiny-synpo.yaml"
    pairrm = build_tiny_pairrm(directory / "pairrm", head_scale=100)
    config.write_text(TINY_SYNPO.format(run_dir=run_dir, pairrm=pairrm))

    # Kill the driver once a stage of iteration 1 is partly committed, as a crash would.
    killed_in = kill_driver_when(config, lambda: partly_committed(run_dir, 1), 1500)
    assert killed_in is not None, "the run ended before a stage of iteration 1 was partly done"
    markers_at_kill = {m.name for m in (killed_in.path / "_done").glob("*.json")}
    result = run_raysynth("run", str(config), timeout=2400)
    return {"run_dir": run_dir, "config": config, "killed_in": killed_in, "markers_at_kill": markers_at_kill, "output": result.stdout}


def test_resumed_in_the_stage_it_was_killed_in_without_loss_or_duplicates(synpo_run):
    killed = synpo_run["killed_in"]
    assert killed.committed
    assert synpo_run["markers_at_kill"] <= {m.name for m in (killed.path / "_done").glob("*.json")}  # kept
    for stage in RunDir(synpo_run["run_dir"]).stages():
        manifest = stage.manifest()
        ids = stage.read(["id"])["id"]
        assert ids.is_unique, stage.name
        assert len(ids) == manifest["rows_out"], stage.name
        assert stage.done_count() == len(stage.done_inputs()), stage.name  # no input committed twice



def test_the_stage_killed_in_equals_an_uninterrupted_run(tmp_path, synpo_run):
    """The kill fell in a stage sampled at temperature > 0 (partly_committed picks one); recomputed
    uninterrupted with the same seed, it holds exactly the rows the resumed run committed."""
    run = synpo_run
    assert_resume_matches_uninterrupted(run["run_dir"], run["config"], run["killed_in"], tmp_path)

def test_two_iterations_train_register_and_evaluate(synpo_run):
    run_dir = synpo_run["run_dir"]
    check_verdicts(run_dir, "synpo", 2)
    trained = {p.parent.parent.name + "/" + json.loads(p.read_text())["method"]
               for p in run_dir.glob("iter-*/*/_done.json")}
    assert {"iter-00/sft", "iter-01/sft", "iter-01/simpo", "iter-02/sft", "iter-02/simpo"} <= trained
    first = pd.read_parquet(run_dir / "iter-01" / "preferences" / "selected.parquet")
    accumulated = pd.read_parquet(run_dir / "iter-02" / "preferences" / "accumulated.parquet")
    assert set(first["id"]) <= set(accumulated["id"]) and accumulated["id"].is_unique
    assert 0 < len(first) <= 4
    # The paper's PairRM threshold at work: every kept pair and seed row passed 0.20, and it dropped some.
    scored = [s for s in RunDir(run_dir).stages() if s.name.rsplit("-", 1)[0] in ("pairs", "seed-pairs")]
    assert len(scored) == 4
    for stage in scored:
        assert (stage.read(["score_gap"])["score_gap"] >= 0.20).all(), stage.name
    assert sum(s.manifest()["rejected"].get("gap_below_threshold", 0) for s in scored) > 0
    for stage in scored:  # a stage left empty was said on the console, and the run went on
        if not stage.manifest()["rows_out"]:
            assert f"[empty] {stage.path.parent.name}/{stage.name} kept 0" in synpo_run["output"]
    for t in (0, 1, 2):
        result = json.loads((run_dir / "eval" / f"iter-{t:02d}.json").read_text())
        strict = result["ifeval"]["prompt_strict"]
        assert strict["low"] <= strict["value"] <= strict["high"] and strict["n"] == 4
        if t:
            assert result["winrate"]["win_rate"]["n"] > 0
            assert result["diversity"]["near_duplicate_rate"]["n"] > 0
    # The improver rewrote the policy's answers; keyword lists of the two iterations are disjoint.
    rd = RunDir(run_dir)
    lists = [set(s.read(["parent_id"])["parent_id"]) for s in rd.stages() if s.name.startswith("keywords-")]
    assert len(lists) == 2 and not lists[0] & lists[1]


def test_report_shows_prompts_pairs_loss_and_metrics(synpo_run):
    run_dir = synpo_run["run_dir"]
    run_raysynth("report", str(run_dir))
    page = (run_dir / "report.html").read_text()
    summary = (run_dir / "summary.md").read_text()
    for stage in ("iter-01/prompts", "iter-02/prompts", "iter-01/pairs", "iter-02/pairs", "iter-01/seed-pairs"):
        assert f">{stage}<" in page, stage
    assert "simpo" in page and "win rate vs champion" in page and "ifeval prompt strict" in page
    assert "Champion timeline" in page and ">synpo-iter-02<" in page
    assert "Samples before and after refinement" in page and "<b>after</b>" in page
    assert "win rate vs `smollm2-135m`" in summary and "## Iteration 2" in summary


def test_sampling_ranking_pairs_best_and_worst_sample(local_ray, tmp_path):
    """The sampling-ranking baseline's stages on the real engine: n samples, each judged against
    sample 0 in both orders, best vs worst per prompt: the expected best and worst are those of the
    judge's own verdicts (each sample's gap against sample 0, recorded by the scores stage; sample 0
    itself at 0)."""
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.recipes.synpo.config import SynpoRun
    from raysynth.recipes.synpo.recipe import ranked_pairs

    cfg = SynpoRun.model_validate({
        "recipe": "synpo", "run_dir": str(tmp_path / "run"), "engine": {"batch_size": 4},
        "synpo": {"pair_builder": "sampling_ranking", "steps": {"answer": {"n": 3, "max_tokens": 32}},
                  "scorer": {"kind": "llm_judge", "gap_threshold": 0,
                             "judge": {"pairwise": {"max_tokens": 64}, "max_explanation_chars": 80}}}})
    run = RunDir(cfg.run_dir)
    prompts = write_source_stage(run, 1, "prompt-filter", [{"prompt": "Name a fruit."}, {"prompt": "Say hello."}],
                                 {"test": 1}, Lineage("synpo", 1, "smollm2-135m"))
    pairs = ranked_pairs(run, 1, prompts, cfg, "smollm2-135m", cfg.engine, str(resolve_model("smollm2-135m")))
    scored = [s for s in run.stages() if s.name.rsplit("-", 1)[0] == "ranking-scores"][0].read()
    assert len(scored) == 4  # samples 1 and 2 of each prompt, against sample 0
    manifest = pairs.manifest()
    assert manifest["rows_in"] == 2 and manifest["rows_out"] + sum(manifest["rejected"].values()) == 2
    # gap 0 keeps a best/worst pair even when all samples tie: only missing verdicts drop a prompt.
    assert manifest["rows_out"] >= 1, manifest
    for row in pairs.read().to_dict("records"):
        assert row["score_gap"] >= 0 and row["chosen"] and row["rejected"]
        verdicts = scored[scored["prompt"] == row["prompt"]]
        ranked = [(0.0, str(verdicts.iloc[0]["reference"]))]
        ranked += list(zip(verdicts["score_gap"].astype(float), verdicts["response"].astype(str)))
        best, worst = max(gap for gap, _ in ranked), min(gap for gap, _ in ranked)
        assert (pytest.approx(best), row["chosen"]) in ranked and (pytest.approx(worst), row["rejected"]) in ranked
        assert row["score_gap"] == pytest.approx(best - worst)


@pytest.mark.parametrize("kind", ["reward_model", "pairrm"])
def test_sampling_ranking_with_reward_model_scorers(local_ray, tmp_path, kind):
    """The sampling-ranking baseline with the paper's scorer kinds (tiny checkpoints in the real
    formats): each of n samples is scored against sample 0, and the pair is the best and the worst
    sample, sample 0 included, checked against the scorer's own numbers computed apart from the
    stage: a reward model's scores, or PairRM's gaps against sample 0 (sample 0 itself at 0)."""
    from raysynth.models import engine_for
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.recipes.synpo.config import SynpoRun
    from raysynth.recipes.synpo.recipe import ranked_pairs
    from raysynth.score.pairrm import PairRM
    from raysynth.score.reward_model import SequenceRewardModel
    from tiny_models import build_tiny_pairrm, build_tiny_reward_model

    model_dir = (build_tiny_reward_model(tmp_path / "rm", resolve_model("smollm2-135m")) if kind == "reward_model"
                 else build_tiny_pairrm(tmp_path / "pairrm"))
    cfg = SynpoRun.model_validate({
        "recipe": "synpo", "run_dir": str(tmp_path / "run"), "engine": {"batch_size": 4},
        "synpo": {"pair_builder": "sampling_ranking", "steps": {"answer": {"n": 3, "max_tokens": 24}},
                  "scorer": {"kind": kind, "model": str(model_dir), "gap_threshold": 0, "max_repetition": None,
                             "batch_size": 4, "num_cpus": 0.5, "concurrency": [1, 1], "max_length": 128}}})
    run = RunDir(cfg.run_dir)
    prompts = write_source_stage(run, 1, "prompt-filter", [{"prompt": "Name a fruit."}, {"prompt": "Say hello."}],
                                 {"test": 1}, Lineage("synpo", 1, "smollm2-135m"))
    pairs = ranked_pairs(run, 1, prompts, cfg, "smollm2-135m", *engine_for(cfg.engine, "smollm2-135m"))
    manifest = pairs.manifest()
    assert manifest["rows_in"] == 2 and manifest["rows_out"] == 2, manifest  # best >= worst: gap 0 keeps all
    samples = [s for s in run.stages() if s.name.startswith("answer")][0].read(["prompt", "sample", "response"])
    for row in pairs.read().to_dict("records"):
        texts = samples[samples["prompt"] == row["prompt"]].sort_values("sample")["response"].astype(str).tolist()
        assert len(texts) == 3 and {row["chosen"], row["rejected"]} <= set(texts) and row["score_gap"] >= 0
        if kind == "reward_model":
            values = SequenceRewardModel(str(model_dir), max_length=128).score([row["prompt"]] * 3, texts)
        else:  # the stage's gap of each sample against sample 0: 2 x the position-swapped preference
            ranker = PairRM(str(model_dir), source_max_length=64, candidate_max_length=32)
            values = [0.0] + [2 * p for p in ranker.compare([row["prompt"]] * 2, texts[1:], texts[:1] * 2)]
        by_text = dict(zip(texts, values))
        assert by_text[row["chosen"]] == pytest.approx(max(values), abs=1e-3)
        assert by_text[row["rejected"]] == pytest.approx(min(values), abs=1e-3)
        assert row["score_gap"] == pytest.approx(max(values) - min(values), abs=1e-3)


def test_seed_po_pairs_the_gold_answer_against_the_policys(local_ray, tmp_path):
    """The seed_po baseline's stages on the real engine: the policy answers seed prompts; the judge
    compares the gold answer with it in both orders; (gold, answer) pairs are kept."""
    from raysynth.models import engine_for
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.recipes.synpo.config import SynpoRun
    from raysynth.recipes.synpo.recipe import seed_preferences
    from raysynth.shipped import seed_pairs

    cfg = SynpoRun.model_validate({
        "recipe": "synpo", "run_dir": str(tmp_path / "run"), "engine": {"batch_size": 4},
        "synpo": {"pair_builder": "seed_po", "steps": {"answer": {"max_tokens": 32}},
                  "scorer": {"kind": "llm_judge", "gap_threshold": 0,
                             "judge": {"pairwise": {"max_tokens": 64}, "max_explanation_chars": 80}}}})
    run = RunDir(cfg.run_dir)
    rows = seed_pairs(None, 3)
    seeds = write_source_stage(run, 0, "seed", rows, {"rows": 3}, Lineage("synpo", 0, "smollm2-135m"))
    pairs = seed_preferences(run, 1, seeds, cfg, "smollm2-135m", *engine_for(cfg.engine, "smollm2-135m"))
    manifest = pairs.manifest()
    assert manifest["rows_in"] == 3 and manifest["rows_out"] + sum(manifest["rejected"].values()) == 3
    # gap 0 keeps ties and agreed wins of the gold answer: only an agreed loss or a missing verdict drops a pair.
    assert manifest["rows_out"] >= 1, manifest
    answers = {r["prompt"]: r["response"] for r in
               [s for s in run.stages() if s.name.startswith("seed-answer")][0].read().to_dict("records")}
    golds = {r["prompt"]: r["gold"] for r in rows}
    for row in pairs.read().to_dict("records"):
        assert row["gold"] == golds[row["prompt"]] and row["response"] == answers[row["prompt"]]
        assert row["score_gap"] >= 0


def test_a_parquet_corpus_gives_the_pool_its_jsonl_copy_gives(local_ray, tmp_path):
    """Corpus files as Parquet (a directory of parts, another text column) or JSONL: the same lists."""
    from raysynth.pipeline import Lineage
    from raysynth.recipes.synpo.config import KeywordConfig
    from raysynth.recipes.synpo.keywords import run_keyword_pool
    from raysynth.shipped import CORPUS, read_jsonl

    texts = [row["text"] for row in read_jsonl(CORPUS, 30)]
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    parquet = tmp_path / "corpus-parquet"
    parquet.mkdir()
    for k, part in enumerate((texts[:12], texts[12:])):
        pd.DataFrame({"body": part, "other": range(len(part))}).to_parquet(parquet / f"part-{k}.parquet")
    lineage, cfg = Lineage("synpo", 0, "-"), KeywordConfig(batch_size=8)

    def pool(path: Path, column: str) -> list[tuple[str, list[str]]]:
        stage = run_keyword_pool(RunDir(tmp_path / f"run-{path.name}"), [str(path)], column, cfg, 0, lineage)
        frame = stage.read(["parent_id", "keywords"]).sort_values("parent_id")
        return [(p, list(k)) for p, k in zip(frame["parent_id"], frame["keywords"])]

    from_jsonl, from_parquet = pool(jsonl, "text"), pool(parquet, "body")
    assert len(from_jsonl) >= 25 and from_parquet == from_jsonl


def test_beta_search_keeps_the_beta_that_ranks_held_out_seed_pairs_best(local_ray, tmp_path):
    """`synpo.beta_search` on the real engine and Ray Train: the policy answers the held-out seed
    prompts, one SimPO run per beta is evaluated on (gold, answer) pairs, and the model of the beta
    with the highest held-out accuracy is the one returned, its search in the result."""
    from raysynth.pipeline import Lineage, write_source_stage
    from raysynth.recipes.synpo.config import SynpoRun
    from raysynth.recipes.synpo.recipe import train_policy
    from raysynth.shipped import seed_pairs
    from raysynth.train import training_summary

    cfg = SynpoRun.model_validate({
        "recipe": "synpo", "run_dir": str(tmp_path / "run"), "engine": {"batch_size": 4},
        "synpo": {"beta_search": [1.0, 8.0], "steps": {"answer": {"max_tokens": 32}}},
        "train": {"method": "simpo", "max_steps": 4, "save_steps": 4, "learning_rate": 1e-3, "max_length": 128,
                  "per_device_batch_size": 2}})
    run = RunDir(cfg.run_dir)
    holdout = write_source_stage(run, 0, "seed-holdout", seed_pairs(None, 4), {"rows": 4},
                                 Lineage("synpo", 0, "smollm2-135m"))
    data = tmp_path / "pairs.parquet"
    pd.DataFrame({"prompt": [r["prompt"] for r in seed_pairs(None, 8)],
                  "chosen": [r["gold"] for r in seed_pairs(None, 8)],
                  "rejected": ["I am not sure."] * 8}).to_parquet(data)
    model, searched = train_policy(run, 1, cfg, data, "smollm2-135m", holdout)

    validation = pd.read_parquet(run.iteration_dir(1) / "preferences" / "validation.parquet")
    assert len(validation) == searched["validation_pairs"] == 4
    assert set(validation["chosen"]) <= {r["gold"] for r in seed_pairs(None, 4)}
    accuracy = searched["held_out_accuracy"]
    assert set(accuracy) == {"1", "8"} and all(0.0 <= a <= 1.0 for a in accuracy.values())
    assert accuracy[f"{searched['beta']:g}"] == max(accuracy.values())
    kept = training_summary(model)
    assert kept["train_metrics"]["eval_rewards/accuracies"] == max(accuracy.values())
    assert json.loads((model.parent / "_train.json").read_text())["train"]["simpo_beta"] == searched["beta"]
