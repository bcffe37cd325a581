"""`report.html`: loss and learning-rate curves, throughput, evaluation, samples, config and
environment, in one self-contained file (inline SVG, inline CSS, no scripts, no CDN).

A run with a ``pretrain/`` sub-run (as `llmkit quickstart` makes) shows both stages.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from llmkit.errors import UsageError
from llmkit.fsutil import atomic_write_text
from llmkit.report.svg import line_chart
from llmkit.rundir import RunDir

CSS = """body{font-family:sans-serif;max-width:1000px;margin:24px auto;color:#222}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.grid{display:flex;flex-wrap:wrap;gap:8px}"""


def _stage_series(run: RunDir) -> list[tuple[str, list[dict[str, Any]]]]:
    stages = []
    pretrain = RunDir(run.root / "pretrain")
    if pretrain.metrics.exists():
        stages.append(("pretrain", pretrain.read_metrics()))
    task = run.load_config().train.task if run.config.exists() else "train"
    stages.append((task, run.read_metrics()))
    return stages


def _table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_show(v))}</td></tr>" for k, v in rows) + "</table>"


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _charts(stages: list[tuple[str, list[dict[str, Any]]]]) -> str:
    def series(kind: str, key: str) -> list[tuple[str, list[tuple[float, float]]]]:
        out = []
        for name, recs in stages:
            pts = [(r["step"], r[key]) for r in recs if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
            if pts:
                out.append((f"{name} {key}", pts))
        return out

    charts = [line_chart(series("train", "loss") + series("eval", "val_loss"), "Loss", "step", "nats"),
              line_chart(series("train", "lr"), "Learning rate", "step", "lr"),
              line_chart(series("train", "tokens_per_s"), "Throughput", "step", "tokens/s")]
    if series("eval", "val_ppl"):
        charts.append(line_chart(series("eval", "val_ppl"), "Validation perplexity", "step", "ppl", log_y=True))
    if series("train", "rewards_chosen"):  # preference tuning
        charts += [line_chart(series("train", "rewards_chosen") + series("train", "rewards_rejected")
                              + series("eval", "val_rewards_chosen") + series("eval", "val_rewards_rejected"),
                              "Rewards", "step", "reward"),
                   line_chart(series("train", "reward_accuracy") + series("eval", "val_reward_accuracy"),
                              "Reward accuracy", "step", "share"),
                   line_chart(series("train", "reward_margin") + series("eval", "val_reward_margin"),
                              "Reward margin", "step", "reward"),
                   line_chart(series("train", "logp_chosen") + series("eval", "val_logp_chosen")
                              + series("eval", "val_logp_rejected"),
                              "Answer log-likelihood (per token)", "step", "nats")]
    if series("train", "zero_spread_groups"):  # RL
        rewards = sorted({k for _, recs in stages for r in recs for k in r
                          if k.startswith("reward_") and not k.endswith("_std") and r.get("kind") == "train"})
        charts += [line_chart(series("train", "reward") + series("eval", "val_reward")
                              + [s for k in rewards for s in series("train", k) + series("eval", f"val_{k}")],
                              "Rewards (mean over the answers)", "step", "reward"),
                   line_chart(series("train", "reward_std") + series("train", "zero_spread_groups"),
                              "Reward spread, groups without signal", "step", "std / share"),
                   line_chart(series("train", "length") + series("eval", "val_length"), "Answer length", "step",
                              "tokens"),
                   line_chart(series("train", "clip_fraction") + series("train", "kl"), "Clipped tokens, KL", "step",
                              "share / nats"),
                   line_chart(series("train", "rollout_tokens_per_s"), "Sampling throughput", "step", "tokens/s")]
    return '<div class="grid">' + "".join(charts) + "</div>"


def _rollouts(run: RunDir, rounds: int = 3) -> str:
    """The sampled answers of an RL run's last rounds (rollouts.jsonl) with their rewards."""
    f = run.root / "rollouts.jsonl"
    if not f.exists():
        return ""
    kept: dict[int, dict[str, Any]] = {}
    for line in f.read_text().splitlines():
        r = json.loads(line)
        kept.setdefault(r["round"], {})[r["completion"]] = r  # a resumed round is written again: once
    parts = ["<h3>Rollouts (the last rounds' first prompt)</h3>"]
    for round_ in sorted(kept)[-rounds:]:
        for r in kept[round_].values():
            scores = ", ".join(f"{k} {v:.3g}" for k, v in r["rewards"].items())
            parts.append(f"<pre><b>round {round_}: {escape(str(r['prompt']))}</b>\n{escape(r['completion'])}\n"
                         f"<i>reward {r['reward']:.3g} ({escape(scores)})</i></pre>")
    return "".join(parts)


def _held_out(answers: list[dict[str, Any]]) -> str:
    """The held-out questions (phrasings never trained on), each answer and its verdict."""
    right = sum(bool(a["right"]) for a in answers)
    rows = "".join(f"<tr><td>{escape(str(a['question']))}</td><td>{'right' if a['right'] else 'wrong'}</td>"
                   f"<td>{escape(str(a.get('answer', '(encrypted run: not shown)'))[:200])}</td></tr>" for a in answers)
    return (f"<h3>Held-out questions: {right}/{len(answers)} about the topic asked</h3>"
            f"<table><tr><th>question</th><th>verdict</th><th>answer</th></tr>{rows}</table>")


def _eval_section(run: RunDir) -> str:
    parts = []
    for f in (run.quickstart_summary, run.eval_results):
        name = f.name
        if not f.exists():
            continue
        data = json.loads(f.read_text())
        metrics = data.get("metrics", data)
        flat = [(k, v) for k, v in metrics.items() if not isinstance(v, (list, dict))]
        parts.append(f"<h3>{escape(name)}</h3>" + _table(flat))
        if "confusion_matrix" in metrics:
            labels = metrics.get("labels", [])
            head = "".join(f"<th>{escape(str(x))}</th>" for x in labels)
            body = "".join(f"<tr><th>{escape(str(labels[i]))}</th>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                           for i, row in enumerate(metrics["confusion_matrix"]))
            parts.append(f"<table><tr><th>true \\ predicted</th>{head}</tr>{body}</table>")
        for s in data.get("samples", []):
            parts.append(f"<pre><b>{escape(s['prompt'])}</b>{escape(s['completion'])}</pre>")
        if data.get("held_out"):
            parts.append(_held_out(data["held_out"]))
        if data.get("samples_encrypted"):
            sealed = data["samples_encrypted"]
            parts.append(f"<p>{int(sealed['count'])} samples are encrypted at rest in "
                         f"<code>{escape(str(sealed['file']))}</code> (not shown in this report).</p>")
    return "".join(parts) or "<p>No evaluation yet: run <code>llmkit eval</code>.</p>"


def _environment(run: RunDir) -> str:
    f = run.manifest
    if not f.exists():
        return "<p>No manifest.</p>"
    m = json.loads(f.read_text())
    hw = m.get("hardware", {})
    torch = m.get("torch") or {}
    rows = [("llmkit", m.get("llmkit_version")), ("python", m.get("python")), ("torch", torch.get("version")),
            ("CUDA", torch.get("cuda")), ("CPU", hw.get("cpu")), ("cores", hw.get("cores")),
            ("GPUs", ", ".join(g["name"] for g in hw.get("gpus", [])) or "none"),
            ("git", (m.get("git") or {}).get("commit")), ("config sha256", m.get("config_sha256"))]
    return _table(rows)


def _privacy(run: RunDir) -> str:
    """privacy.offline and privacy.pii of the run, with the PII counts `prepare` recorded."""
    import yaml

    cfg = yaml.safe_load(run.config.read_text()) if run.config.exists() else {}
    p = (cfg or {}).get("privacy") or {}
    rows: list[tuple[str, Any]] = [("offline", "on" if p.get("offline") else "off"), ("PII in prepare", p.get("pii", "off"))]
    if p.get("encryption_key_env"):
        rows.append(("encryption at rest", f"AES-256-GCM, key in ${p['encryption_key_env']}: data, tokenizer, "
                     "checkpoints, final/ and eval samples"))
    else:
        rows.append(("encryption at rest", "off"))
    dp = p.get("dp") or {}
    if dp.get("enabled"):
        spent = [(r["epsilon"], r["delta"], r["step"]) for r in run.read_metrics()
                 if r.get("kind") == "train" and "epsilon" in r]
        rows += [("differential privacy", f"DP-SGD (Opacus), clip {dp.get('max_grad_norm')}, "
                  + (f"target epsilon {dp['target_epsilon']}" if dp.get("target_epsilon") is not None
                     else f"noise multiplier {dp.get('noise_multiplier')}")),
                 ("epsilon spent", f"{spent[-1][0]:.3f} at delta {spent[-1][1]:.3g} (step {spent[-1][2]})"
                  if spent else "no step yet")]
    else:
        rows.append(("differential privacy", "off"))
    for task in ("pretrain", "sft", "classify", "preference", "rl"):
        meta = run.task_data(task) / "meta.json"
        pii = json.loads(meta.read_text()).get("pii") if meta.exists() else None
        if pii:
            rows[1] = ("PII in prepare", pii["mode"])  # what prepare did (a prepared run may have no config.yaml yet)
            rows += [(f"{task}: {kind}", n) for kind, n in pii["counts"].items() if n]
            rows += [(f"{task}: documents with PII", pii["documents_with_pii"]),
                     (f"{task}: documents dropped", pii["documents_dropped"]),
                     ("names and places", pii.get("names_and_addresses", "not detected"))]
    return _table(rows)


def build_report(run: str | Path) -> Path:
    """Write ``<run>/report.html`` from the run directory's files; returns its path."""
    run = RunDir(Path(run))
    if not run.metrics.exists():
        raise UsageError(f"{run.root} has no metrics.jsonl", "the report plots a training run's metrics",
                         "train first: llmkit train --config <run.yaml> (or llmkit quickstart)")
    stages = _stage_series(run)
    last = {name: next((r for r in reversed(recs) if r.get("kind") == "train"), {}) for name, recs in stages}
    summary = [(f"{name}: steps", rec.get("step")) for name, rec in last.items()]
    summary += [(f"{name}: final loss", rec.get("loss")) for name, rec in last.items()]
    summary += [(f"{name}: training time (s)", rec.get("elapsed_s")) for name, rec in last.items()]
    config = run.config.read_text() if run.config.exists() else ""
    html = (f"<!doctype html><html><head><meta charset='utf-8'><title>llmkit report: {escape(run.root.name)}</title>"
            f"<style>{CSS}</style></head><body><h1>llmkit run report: {escape(run.root.name)}</h1>"
            f"<h2>Summary</h2>{_table(summary)}<h2>Curves</h2>{_charts(stages)}"
            f"<h2>Evaluation and samples</h2>{_eval_section(run)}{_rollouts(run)}"
            f"<h2>Privacy</h2>{_privacy(run)}<h2>Environment</h2>{_environment(run)}<h2>Config</h2><pre>{escape(config)}</pre></body></html>")
    out = run.report
    atomic_write_text(out, html)
    return out
