"""Bad configs: one clear error each (file, field, expectation), exit code 2, nothing written."""

import subprocess
import sys
from pathlib import Path

import pytest

from raysynth.config import ConfigError
from raysynth.recipes import load_config

GOOD = "recipe: condor\nrun_dir: {run}\ncondor:\n  max_tags: 2\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysynth.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("body, field, expected", [
    (GOOD + "  max_tagz: 3\n", "condor.max_tagz", "unknown key"),
    (GOOD + "engine:\n  batch_size: lots\n", "engine.batch_size", "valid integer"),
    (GOOD + "  tag_tree: no/such/tree.json\n", "condor.tag_tree", "file not found"),
    (GOOD + "engine:\n  model: /no/such/model\n", "engine.model", "not"),
    (GOOD + "student_model: /no/such/student\n", "student_model", "not"),
    (GOOD + "  task_types: [coding]\n", "condor.task_types", "unknown task types"),
    (GOOD.replace("condor\n", "alchemy\n", 1), "recipe", "one of the recipes"),
    (GOOD + "engine:\n  concurrency: [3, 1]\n", "engine.concurrency", "min <= max"),
    (GOOD + "promotion:\n  ifeval_metrics: [accuracy]\n", "promotion.ifeval_metrics.0", "prompt_strict"),
    (GOOD + "eval:\n  judge_scorer:\n    kind: llm_judge\n", "eval.judge_scorer", "pairrm or reward_model"),
    (GOOD + "eval:\n  judge_model: smollm2-135m\n  judge_scorer:\n    kind: pairrm\n", "eval", "expected one judge"),
    (GOOD + "engine:\n  resources:\n    GPU: 1\n", "engine.resources", "custom resources only"),
])
def test_bad_config_is_one_clear_error(tmp_path: Path, body: str, field: str, expected: str):
    run = tmp_path / "run"
    config = tmp_path / "bad.yaml"
    config.write_text(body.format(run=run))
    result = cli("run", str(config))
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0, message  # one line, no traceback
    assert str(config) in message and f"'{field}'" in message and expected in message, message
    assert not run.exists()


def test_missing_config_file(tmp_path: Path):
    result = cli("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "config file not found" in result.stderr


def test_overrides_and_relative_paths(tmp_path: Path):
    (tmp_path / "tree.json").write_text('{"A": {"B": ["c"]}}')
    config = tmp_path / "c.yaml"
    config.write_text(GOOD.format(run=tmp_path / "r") + "  tag_tree: tree.json\n")
    cfg = load_config(config, ["engine.batch_size=8", "condor.steps.answer.temperature=0"])
    assert cfg.engine.batch_size == 8 and cfg.condor.steps.answer.temperature == 0
    assert cfg.condor.tag_tree == tmp_path / "tree.json"
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(config, ["engine.batch_size"])


def test_help_explains_commands():
    result = cli("--help")
    assert result.returncode == 0 and "run" in result.stdout and "status" in result.stdout
    assert "RAY_ADDRESS" in cli("run", "--help").stdout
    for command in ("eval", "report", "serve", "swap", "models", "promote", "rollback"):
        assert command in result.stdout
    serve_help = cli("serve", "--help").stdout
    assert "RAYSYNTH_API_KEY" in serve_help and "RAYSYNTH_ADMIN_KEY" in serve_help


@pytest.mark.parametrize("args,expected", [
    (("eval", "--run-dir", "{tmp}", "--set", "limit=abc"), "field 'limit'"),
    (("eval", "no-such-model", "--run-dir", "{tmp}"), "no-such-model"),
    (("serve", "--run-dir", "{tmp}", "--set", "port=99999"), "field 'port'"),
    (("serve", "--run-dir", "{tmp}", "--set", "replicas=2"), "field 'replicas': unknown key"),
    (("swap", "no-such-model", "--run-dir", "{tmp}"), "no-such-model"),
    (("promote", "no-such-model", "--run-dir", "{tmp}"), "no-such-model"),
    (("rollback", "--run-dir", "{tmp}"), "nothing to roll back to"),
])
def test_eval_serve_swap_errors_are_one_line_exit_2(tmp_path: Path, args, expected):
    result = cli(*(a.format(tmp=tmp_path / "run") for a in args))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (tmp_path / "run" / "models.json").exists()


def test_partial_section_keeps_the_fields_defaults():
    """Overriding one key of a section keeps the section's own defaults for the others."""
    from raysynth.config import EvalConfig, load_section
    from raysynth.recipes.condor.config import CondorRun

    cfg = load_section(EvalConfig, {"generation": {"max_tokens": 48}}, [], "test")
    assert cfg.generation.max_tokens == 48 and cfg.generation.temperature == 0.0 and not cfg.generation.structured
    run = CondorRun(recipe="condor", condor={"steps": {"answer": {"temperature": 0}}})
    assert run.condor.steps.answer.max_tokens == 1024 and run.condor.steps.answer.structured is False
