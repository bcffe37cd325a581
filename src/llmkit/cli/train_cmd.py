"""`llmkit train`: the one loop, resumable; many processes through torchrun's elastic agent."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli.options import RESUME_METAVAR, SetOpt, echo_json, json_option, progress


def register(app: typer.Typer) -> None:
    """Add `train` to the app."""
    app.command("train")(train)


def train(
    config: Path = typer.Option(..., "--config", "-c", help="Run config YAML file."),
    overrides: list[str] = SetOpt,
    run_dir: Path = typer.Option(None, "--run-dir", help="Run directory (default: <runs_root>/<name>)."),
    resume: str = typer.Option("auto", "--resume", metavar=RESUME_METAVAR,
                               help="auto (newest valid checkpoint), never, or a checkpoint path."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="Resume even though the config changed (prints the diff)."),
    stop_at_step: int = typer.Option(None, "--stop-at-step", min=1,
                                     help="Checkpoint and stop after this step (resume later to continue)."),
    nproc_per_node: int = typer.Option(None, "--nproc-per-node", min=1,
                                       help="Train with this many processes on this node, under torchrun's "
                                            "elastic agent (one per GPU; on a CPU each gets cores / N threads)."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Nodes in the job (with --nproc-per-node)."),
    node_rank: int = typer.Option(None, "--node-rank", min=0, help="This node's rank (multi-node jobs)."),
    rdzv_endpoint: str = typer.Option(None, "--rdzv-endpoint", metavar="HOST:PORT",
                                      help="Where the nodes meet (c10d rendezvous; the same on every node)."),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0,
                                     help="Restart the workers this often after a failure; each restart "
                                          "resumes from the newest checkpoint."),
    stop_timeout: int = typer.Option(300, "--stop-timeout", min=1, metavar="SECONDS",
                                     help="After SIGTERM, how long the agent lets the workers finish their step "
                                          "and checkpoint before it kills them."),
    as_json: bool = json_option("the final summary (how it ended, step, last loss, evaluation, paths)"),
) -> None:
    """Train (pretrain, SFT, LoRA or classification) as the config says; resumes by default."""
    from llmkit.config.load import load_config
    from llmkit.training.entry import check_agent_options, reports, train_with_agent
    from llmkit.training.entry import train as run_train

    cfg = load_config(config, overrides)
    check_agent_options(nproc_per_node, bool(nnodes != 1 or node_rank is not None or rdzv_endpoint or max_restarts
                                             or stop_timeout != 300))
    if nproc_per_node is not None:
        worker = ["train", "--config", str(config), "--resume", resume, *[a for o in overrides for a in ("--set", o)]]
        if run_dir is not None:
            worker += ["--run-dir", str(run_dir)]
        if allow_config_change:
            worker.append("--allow-config-change")
        if stop_at_step is not None:
            worker += ["--stop-at-step", str(stop_at_step)]
        code = train_with_agent(cfg, worker, nproc_per_node, nnodes, node_rank, rdzv_endpoint, max_restarts,
                                stop_timeout, progress(as_json))
        if as_json:
            echo_json({"processes": nproc_per_node * nnodes, "exit_code": code, "node_rank": node_rank or 0})
        elif code == 0 and not node_rank:  # one line per job, from the first node
            typer.echo(f"torchrun: all {nproc_per_node * nnodes} processes finished")
        raise typer.Exit(code)

    result = run_train(cfg, run_dir, resume, allow_config_change, stop_at_step, log=progress(as_json))
    if not reports():
        raise typer.Exit(result.exit_code)  # rank 0 reports
    if as_json:
        final = result.run_dir / "final"
        echo_json({"reason": result.reason, "step": result.step, "exit_code": result.exit_code,
                   "last_loss": result.last_loss, "eval": result.eval.metrics() if result.eval else None,
                   "run_dir": str(result.run_dir), "final": str(final) if result.reason == "completed" else None})
        raise typer.Exit(result.exit_code)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in (result.eval.metrics() if result.eval else {}).items())
    if result.reason == "completed":
        typer.echo(f"done at step {result.step}: {summary}; model in {result.run_dir / 'final'}")
    elif result.reason == "stop_at_step":
        typer.echo(f"stopped at step {result.step} as asked; resume with: llmkit train --config {config}")
    raise typer.Exit(result.exit_code)
