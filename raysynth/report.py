"""`raysynth report RUN_DIR`: one self-contained HTML page (plots embedded as PNG) and a short
Markdown summary of a run: evaluation per iteration with intervals, rows and throughput per stage,
why rows were dropped, training loss, and sample rows before and after refinement side by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to PNG
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from raysynth.recipes import RECIPES  # noqa: E402
from raysynth.registry import Registry, read_registry  # noqa: E402
from raysynth.status import stage_rows, stage_state  # noqa: E402
from raysynth.store import IDENTITY, ITERATION_SUMMARY, RunDir, StageDir, saved_run_config  # noqa: E402


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def load_evals(run: RunDir) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run.path / "eval").glob("iter-*.json"))]


def metric_rows(evals: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (iteration, metric) with value and interval, from every eval file."""
    rows = []
    for result in evals:
        metrics = {f"ifeval {k.replace('_', ' ')}": v for k, v in result.get("ifeval", {}).items()}
        if "winrate" in result:
            metrics["win rate vs champion"] = result["winrate"]["win_rate"]
        for key, value in (result.get("paired") or {}).get("ifeval", {}).items():
            metrics[f"ifeval {key.replace('_', ' ')} minus champion"] = value
        for key, value in result.get("diversity", {}).items():
            if isinstance(value, dict):
                metrics[f"diversity {key.replace('_', ' ')}"] = value
        rows += [{"iteration": result["iteration"], "metric": name, **m} for name, m in metrics.items()]
    return pd.DataFrame(rows, columns=["iteration", "metric", "value", "low", "high", "n"])


def load_iterations(run: RunDir) -> list[dict[str, Any]]:
    """The per-iteration summaries recipes write (`iter-NN/iteration.json`): data funnel, histograms."""
    return [json.loads(p.read_text()) for p in sorted(run.path.glob(f"iter-*/{ITERATION_SUMMARY}"))]


def funnel_frame(iterations: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per iteration, one column per step of the data funnel (rows left after it)."""
    return pd.DataFrame([{"iteration": step["iteration"], **step.get("funnel", {})} for step in iterations])


def plot_histograms(iterations: list[dict[str, Any]]) -> str:
    """Per assessed aspect, the score counts of each iteration side by side."""
    aspects = list(dict.fromkeys(a for step in iterations for a in step.get("histograms", {})))
    fig, axes = plt.subplots(1, len(aspects), figsize=(6 * len(aspects), 3.2), squeeze=False)
    for ax, aspect in zip(axes.flat, aspects):
        steps = [step for step in iterations if aspect in step.get("histograms", {})]
        width = 0.8 / len(steps)
        for k, step in enumerate(steps):
            counts = step["histograms"][aspect]
            scores = sorted(int(v) for v in counts)
            ax.bar([v - 0.4 + width * (k + 0.5) for v in scores], [counts[str(v)] for v in scores], width=width,
                   label=f"iteration {step['iteration']}")
        ax.set_title(f"self-assessed {aspect} score")
        ax.set_xlabel("score")
        ax.set_xticks(range(1, 11))
        ax.legend(fontsize=8)
    return _png(fig)


def stage_frame(run: RunDir) -> pd.DataFrame:
    def rounded(value: float | None, digits: int) -> float:
        return float("nan") if value is None else round(value, digits)

    return pd.DataFrame([{"stage": f"{row['iteration']}/{row['stage'].rsplit('-', 1)[0]}",
                          "state": stage_state(row), "rows in": row["rows_in"],
                          "rows out": row["rows_out"], "dropped": sum(row["rejected"].values()),
                          "reasons": row["rejected"], "tokens out": row["tokens_out"],
                          "seconds": round(row["seconds"], 1), "rows/s": rounded(row["rows_per_s"], 2),
                          "tokens/s": rounded(row["tokens_per_s"], 1)} for row in stage_rows(run.path)])


def nothing_kept(stages: pd.DataFrame, iterations: list[dict[str, Any]]) -> list[str]:
    """Stages that kept no row of a non-empty input, and iterations skipped for want of data."""
    found = [f"stage {row['stage']} kept 0 of {row['rows in']} rows" for row in stages.to_dict("records")
             if row["state"] == "EMPTY"] if len(stages) else []
    return found + [f"iteration {step['iteration']} trained nothing: {step['skipped']}"
                    for step in iterations if step.get("skipped")]


def plot_metrics(metrics: pd.DataFrame) -> str:
    names = list(dict.fromkeys(metrics["metric"]))
    cols = min(3, len(names))
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(4.2 * cols, 3 * ((len(names) + cols - 1) // cols)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        part = metrics[metrics["metric"] == name].sort_values("iteration")
        err = [part["value"] - part["low"], part["high"] - part["value"]]
        ax.errorbar(part["iteration"], part["value"], yerr=err, marker="o", capsize=4)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_xticks(sorted(part["iteration"].unique()))
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _png(fig)


def plot_stages(stages: pd.DataFrame) -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.35 * len(stages) + 1.5))
    left.barh(stages["stage"], stages["rows/s"], color="#4c78a8")
    left.set_title("rows/s")
    left.invert_yaxis()
    right.barh(stages["stage"], stages["tokens/s"], color="#f58518")
    right.set_title("tokens/s (generated)")
    right.invert_yaxis()
    right.set_yticklabels([])
    return _png(fig)


def plot_drops(stages: pd.DataFrame) -> str:
    rows = [(s, r, n) for s, reasons in zip(stages["stage"], stages["reasons"]) for r, n in reasons.items()]
    frame = pd.DataFrame(rows, columns=["stage", "reason", "rows"]).pivot_table(
        index="stage", columns="reason", values="rows", aggfunc="sum", fill_value=0)
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(frame) + 1.8))
    frame.plot.barh(stacked=True, ax=ax)
    ax.set_xlabel("rows dropped")
    ax.invert_yaxis()
    return _png(fig)


def training_runs(run: RunDir) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for done in sorted(run.path.glob("iter-*/*/_done.json")):
        summary = json.loads(done.read_text())
        if "log_history" in summary:
            runs.append((f"{done.parent.parent.name}/{done.parent.name}", summary))
    return runs


def plot_training(runs: list[tuple[str, dict[str, Any]]]) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, summary in runs:
        points = [(e["step"], e["loss"]) for e in summary["log_history"] if "loss" in e and "step" in e]
        if points:
            ax.plot(*zip(*points), marker=".", label=f"{label} ({summary['method']})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return _png(fig)


def side_by_side(run: RunDir, recipe: str, limit: int = 8) -> list[dict[str, Any]]:
    """Sample rows of the after stage with the row they came from in the before stage."""
    shown = RECIPES[recipe].side_by_side if recipe in RECIPES else None
    if shown is None:
        return []
    pairs: list[dict[str, Any]] = []
    for iteration_dir in sorted(run.path.glob("iter-*")):
        stages = [StageDir(d) for d in iteration_dir.iterdir() if (d / IDENTITY).exists()]
        before = [s for s in stages if s.name.rsplit("-", 1)[0] == shown.before_stage]
        after = sorted((s for s in stages if s.name.startswith(shown.after_prefix)), key=lambda s: s.name)
        if not before or not after:
            continue
        parents: dict[str, str] = {}
        for stage in stages:
            parents.update(dict(stage.read(["id", "parent_id"]).values.tolist()))
        originals = before[0].read(["id", shown.before_column]).set_index("id")[shown.before_column].to_dict()
        for row in after[-1].read().head(limit).to_dict("records"):
            node = row["id"]
            while node in parents and node not in originals:
                node = parents[node]
            if node in originals:
                pairs.append({"iteration": iteration_dir.name, "prompt": row.get(shown.prompt_column, ""),
                              "before": originals[node], "after": row[shown.after_column]})
    return pairs


def position_bound(winrate: dict[str, Any]) -> bool:
    """The judge's verdicts follow the position it was shown the answers in, not the answers: its
    first-shown rate's interval lies outside 25%-75%."""
    first = winrate["picked_first_shown"]
    return first["low"] > 0.75 or first["high"] < 0.25


def position_note(winrate: dict[str, Any]) -> str:
    first = winrate["picked_first_shown"]
    note = (f"the judge picked the answer shown first in {first['value']:.0%} [{first['low']:.0%}, "
            f"{first['high']:.0%}] of {first['n']} verdicts")
    if position_bound(winrate):
        note += (": it follows the position, not the answers, so both-orders judging makes its pairs ties and "
                 "this win rate says little of the models (use eval.judge_scorer or a larger judge)")
    return note[0].upper() + note[1:]


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="grid", na_rep="-",
                         float_format=lambda v: f"{v:.3f}")


def champion_frames(registry: Registry) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(timeline: which model was champion from when and why; candidates: each trained model against
    the champion it faced, with the gate's verdict)."""
    timeline = pd.DataFrame([{"when": pd.Timestamp(e.at, unit="s").strftime("%Y-%m-%d %H:%M:%S"), "model": e.model,
                              "event": e.event, "why": e.reason} for e in registry.timeline],
                            columns=["when", "model", "event", "why"])
    rows = []
    for entry in registry.models.values():
        if entry.iteration == 0:
            continue
        versus = entry.versus or {}
        win = (versus.get("winrate") or {})
        ifeval = versus.get("ifeval") or {}
        rows.append({"candidate": entry.name, "champion faced": versus.get("champion", ""),
                     "win rate": _fmt(win["win_rate"]) if win.get("win_rate") else "",
                     "W-T-L": f"{win['wins']}-{win['ties']}-{win['losses']}" if win else "",
                     **{f"ifeval {k.replace('_', ' ')} diff": _fmt(v) for k, v in ifeval.items()},
                     "status": entry.status})
    return timeline, pd.DataFrame(rows)


def _fmt(m: dict[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}] (n={m['n']})"


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #4c78a8;padding-bottom:.2em;margin-top:1.6em}
table.grid{border-collapse:collapse;font-size:13px} table.grid td,table.grid th{border:1px solid #ccc;padding:4px 8px}
table.grid th{background:#eef3f8} .pair{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin:1em 0}
.pair div{background:#f7f7f7;border:1px solid #ddd;padding:8px;white-space:pre-wrap;font-size:13px}
.prompt{font-weight:600;margin-top:1.2em} .muted{color:#777} img{max-width:100%}
.warn{background:#fff3cd;border:1px solid #e0b000;padding:6px 10px}"""


def build_report(run_dir: Path | str) -> dict[str, Path]:
    run = RunDir(run_dir)
    config = saved_run_config(run.path)
    recipe = config.get("recipe", "?")
    evals, stages, trains, iterations = load_evals(run), stage_frame(run), training_runs(run), load_iterations(run)
    metrics = metric_rows(evals)
    pairs = side_by_side(run, recipe)

    parts = [f"<h1>raysynth run: {html.escape(str(run.path))}</h1>",
             f"<p class='muted'>recipe <b>{html.escape(recipe)}</b>, model "
             f"<b>{html.escape(str(config.get('engine', {}).get('model', '?')))}</b>, "
             f"{len(stages)} stages, {int(stages['rows out'].sum()) if len(stages) else 0} rows written</p>"]
    parts += [f"<p class='warn'>Nothing kept: {html.escape(finding)}</p>" for finding in nothing_kept(stages, iterations)]
    parts.append("<h2>Evaluation per iteration (95% bootstrap intervals)</h2>")
    if len(metrics):
        parts += [plot_metrics(metrics), _table(metrics)]
        for result in evals:
            if "winrate" in result:
                w = result["winrate"]
                parts.append(f"<p>iteration {result['iteration']} vs {html.escape(w['baseline'])}: {w['wins']} wins, "
                             f"{w['ties']} ties, {w['losses']} losses, {w['incomplete']} incomplete (judge: "
                             f"{html.escape(w['judge'])}, {html.escape(w.get('method', 'both orders'))})</p>")
                if "picked_first_shown" in w:
                    parts.append(f"<p class='{'warn' if position_bound(w) else 'muted'}'>{position_note(w)}</p>")
    else:
        parts.append("<p class='muted'>No evaluation in this run (set an <code>eval:</code> section).</p>")
    registry = read_registry(run.path)
    if registry.timeline:
        timeline, candidates = champion_frames(registry)
        parts += ["<h2>Champion timeline</h2>",
                  f"<p>Served now: <b>{html.escape(str(registry.current))}</b>. A trained model is promoted only "
                  "when it beats the champion it faces (promotion gate, config <code>promotion:</code>).</p>",
                  _table(timeline)]
        if len(candidates):
            parts += ["<p>Each candidate against its champion (paired, 95% intervals)</p>", _table(candidates)]
    if iterations:
        parts += ["<h2>Data per iteration (rows left after each step)</h2>", _table(funnel_frame(iterations))]
        rates = pd.DataFrame([{"iteration": step["iteration"], **step["rates"]} for step in iterations if step.get("rates")])
        if len(rates):
            parts += ["<p>Rates (share of the step's input rows)</p>", _table(rates)]
        if any(step.get("histograms") for step in iterations):
            parts.append(plot_histograms(iterations))
        searches = [step for step in iterations if step.get("beta_search", {}).get("held_out_accuracy")]
        if searches:
            parts += ["<p>SimPO beta search: share of held-out seed pairs each beta's model ranks right</p>",
                      _table(pd.DataFrame([{"iteration": step["iteration"], "kept beta": f'{step["beta_search"]["beta"]:g}',
                                            **{f"beta {b}": a for b, a in step["beta_search"]["held_out_accuracy"].items()}}
                                           for step in searches]))]
    parts.append("<h2>Stages: rows and throughput</h2>")
    if len(stages):
        parts += [plot_stages(stages), _table(stages.drop(columns=["reasons"]))]
    parts.append("<h2>Why rows were dropped</h2>")
    if len(stages) and stages["dropped"].sum():
        parts.append(plot_drops(stages))
    else:
        parts.append("<p class='muted'>No rows were dropped.</p>")
    if trains:
        parts += ["<h2>Training</h2>", plot_training(trains)]
        parts.append(_table(pd.DataFrame([{"run": label, "method": s["method"], "steps": s["steps"],
                                           "first loss": s["first_loss"], "last loss": s["last_loss"],
                                           "seconds": s["seconds"]} for label, s in trains])))
    parts.append("<h2>Samples before and after refinement</h2>")
    if not pairs:
        parts.append("<p class='muted'>This recipe has no refinement step to compare.</p>")
    for pair in pairs:
        parts.append(f"<p class='prompt'>{html.escape(pair['iteration'])}: {html.escape(str(pair['prompt']))}</p>"
                     f"<div class='pair'><div><b>before</b>\n{html.escape(str(pair['before']))}</div>"
                     f"<div><b>after</b>\n{html.escape(str(pair['after']))}</div></div>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>raysynth report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    html_path, md_path = run.path / "report.html", run.path / "summary.md"
    html_path.write_text(page)
    md_path.write_text(summary_markdown(run, recipe, evals, stages, trains, iterations))
    return {"html": html_path, "markdown": md_path}


def summary_markdown(run: RunDir, recipe: str, evals: list[dict[str, Any]], stages: pd.DataFrame,
                     trains: list[tuple[str, dict[str, Any]]], iterations: list[dict[str, Any]]) -> str:
    lines = [f"# raysynth run `{run.path}` ({recipe})", ""]
    lines += [f"- **nothing kept**: {finding}" for finding in nothing_kept(stages, iterations)]
    if len(stages):
        lines += [f"- {len(stages)} stages; {int(stages['rows out'].sum())} rows written, "
                  f"{int(stages['dropped'].sum())} dropped, {int(stages['tokens out'].sum())} tokens generated"]
        reasons: dict[str, int] = {}
        for item in stages["reasons"]:
            for reason, count in item.items():
                reasons[reason] = reasons.get(reason, 0) + count
        if reasons:
            lines.append("- dropped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    for step in iterations:
        lines.append(f"- iteration {step['iteration']} data: "
                     + ", ".join(f"{what} {n}" for what, n in step.get("funnel", {}).items()))
        if step.get("rates"):
            lines.append("  - rates: " + ", ".join(f"{what} {value:.3f}" for what, value in step["rates"].items()))
        for aspect, counts in step.get("histograms", {}).items():
            lines.append(f"  - {aspect} scores: " + " ".join(f"{v}:{n}" for v, n in counts.items()))
        if accuracy := step.get("beta_search", {}).get("held_out_accuracy"):
            lines.append("  - SimPO beta search, held-out pairs ranked right: " + ", ".join(
                f"beta {b} {a:.2f}" for b, a in accuracy.items()) + f"; kept beta {step['beta_search']['beta']:g}")
    for label, summary in trains:
        lines.append(f"- training {label}: {summary['steps']} steps, loss {summary['first_loss']} -> {summary['last_loss']}")
    for result in evals:
        lines += ["", f"## Iteration {result['iteration']}: `{result['model']}`", ""]
        for name, m in result.get("ifeval", {}).items():
            lines.append(f"- IFEval {name.replace('_', ' ')}: {_fmt(m)}")
        if "winrate" in result:
            lines.append(f"- win rate vs `{result['winrate']['baseline']}`: {_fmt(result['winrate']['win_rate'])}")
            if "picked_first_shown" in result["winrate"]:
                lines.append(f"- {position_note(result['winrate'])}")
        for name, m in (result.get("paired") or {}).get("ifeval", {}).items():
            lines.append(f"- IFEval {name.replace('_', ' ')} minus `{result['paired']['baseline']}` (paired): {_fmt(m)}")
        for name, m in result.get("diversity", {}).items():
            if isinstance(m, dict):
                lines.append(f"- diversity {name.replace('_', ' ')}: {_fmt(m)}")
    registry = read_registry(run.path)
    if registry.timeline:
        lines += ["", "## Champion timeline", ""]
        lines += [f"- {e.model}: {e.event}" + (f" ({e.reason})" if e.reason else "") for e in registry.timeline]
    return "\n".join(lines) + "\n"
