"""Command line of the evaluation stage: it evaluates runs that exist and trains nothing.

    python -m glimpse.evaluate --run RUN_DIR [--split test]          metrics, confusion, localisation, attention figures
    python -m glimpse.evaluate compare --run A --run B [--name ..]   two runs' attention side by side (PNG, GIF, MP4)

The comparison table and the protocols train what is missing first: ``glimpse table`` and ``glimpse protocol``.
"""

from __future__ import annotations

import os

import click

from glimpse.errors import Group


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="The run directory to evaluate.")
@click.option("--split", "role", default="test", show_default=True, help="Which videos of the run's split.")
@click.option("--figures", default=4, show_default=True, help="Videos to draw attention strips and GIFs for.")
@click.option("--checkpoint", "which", default="best", show_default=True, type=click.Choice(["best", "last"]))
@click.option("--store", default=None, help="Where the run's store is now, when it moved. [the one the run recorded]")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="Where the model predicts (auto: the GPU when one is visible).")
@click.pass_context
def main(ctx: click.Context, run_dir: str | None, role: str, figures: int, which: str, store: str | None,
         device: str) -> None:
    """Evaluate a trained run (metrics, confusion, attention localisation, attention figures)."""
    if ctx.invoked_subcommand is not None:
        return
    if run_dir is None:
        raise click.UsageError("give --run RUN_DIR, or the sub-command compare")
    from glimpse.evaluate.report import EVALUATION_DIR, evaluate_run
    from glimpse.train.config import ConfigError

    try:
        metrics = evaluate_run(run_dir, role, figures, which, store, device)
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # a broken or hostile run dir, names the file
        raise click.ClickException(str(exc)) from exc
    line = f"{metrics['model']} on {metrics['videos']} {role} videos: top-1 {metrics['top1']:.3f}, " \
           f"top-{metrics['top5_k']} {metrics['top5']:.3f}"
    line += f", frame-level top-1 {metrics['frame_top1']:.3f}"
    if metrics.get("map") is not None:
        line += f", mAP {metrics['map']:.3f}"
    place = metrics.get("localization")
    if place and place.get("mass") is not None:
        line += (f"; attention in box {place['mass']:.3f} (uniform {place['uniform_mass']:.3f}), pointing "
                 f"{place['hit_rate']:.3f} (uniform {place['uniform_hit_rate']:.3f})")
    click.echo(line)
    click.echo(f"written to {os.path.join(run_dir, EVALUATION_DIR)}")


@main.command("compare")
@click.option("--run", "run_dirs", multiple=True, required=True, type=click.Path(file_okay=False),
              help="A run directory; give it two or more times.")
@click.option("--name", "names", multiple=True, help="A label per --run, in order. [the run folders' names]")
@click.option("--out", default=None, help="Where the figures go. [next to the first run: compare-<A>-vs-<B>]")
@click.option("--split", "role", default="test", show_default=True, help="Which videos of the runs' split.")
@click.option("--videos", default=4, show_default=True, help="How many videos to draw.")
@click.option("--checkpoint", "which", default="best", show_default=True, type=click.Choice(["best", "last"]))
def compare(run_dirs: tuple[str, ...], names: tuple[str, ...], out: str | None, role: str, videos: int,
            which: str) -> None:
    """Attention maps of two or more runs on the same videos, side by side (as Fig. 6 of Quan et al.)."""
    from glimpse.evaluate.report import compare_runs

    first = run_dirs[0].rstrip("/")
    out = out or os.path.join(os.path.dirname(first), "compare-" + "-vs-".join(os.path.basename(r.rstrip("/"))
                                                                              for r in run_dirs))
    try:
        written = compare_runs(run_dirs, out, names or None, role, videos, which)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{len(written)} videos, strip + GIF + MP4 each, written to {out}")
