"""`python -m bench [--quick] [NAME ...]`: run the benchmarks and rewrite docs/benchmarks.md.

Every module bench/bench_*.py exposes ``run(quick: bool = False) -> str`` returning one markdown
section. Results are ratios measured side by side in the same run, because these machines are noisy.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import click

BENCH_DIR = Path(__file__).resolve().parent
OUTPUT = BENCH_DIR.parent / "docs" / "benchmarks.md"


def discover() -> list[str]:
    """Names of the benchmark modules, in a stable order."""
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def previous_sections(path: Path) -> dict[str, str]:
    """Sections of an earlier docs/benchmarks.md, by module name, so a partial run keeps the others."""
    if not path.exists():
        return {}
    found = re.findall(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", path.read_text(), flags=re.S)
    return dict(found)


def machine_line() -> str:
    """One line describing where the numbers were taken."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node() or 'unknown host'}: {os.cpu_count()} CPU cores, {gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Tiny shapes: check the benchmarks run, numbers are meaningless.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=OUTPUT, show_default=True)
@click.argument("names", nargs=-1)
def main(quick: bool, output: Path, names: tuple[str, ...]) -> None:
    """Run benchmarks (all, or the NAMES given, e.g. `models`) and write their sections to OUTPUT."""
    modules = discover()
    chosen = [f"bench_{n}" if not n.startswith("bench_") else n for n in names] or modules
    unknown = sorted(set(chosen) - set(modules))
    if unknown:
        raise click.UsageError(f"unknown benchmarks {unknown}; known: {[m[6:] for m in modules]}")
    sections, failed = previous_sections(output), []
    for name in chosen:
        click.echo(f"bench: {name} ...", err=True)
        start = time.perf_counter()
        try:
            body = importlib.import_module(f"bench.{name}").run(quick=quick).rstrip() + "\n"
        except Exception:  # a broken benchmark is reported in the file, the others still run
            failed.append(name)
            body = f"## {name}\n\nFAILED:\n\n```\n{traceback.format_exc()}```\n"
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        mode = " in quick mode (tiny shapes, numbers meaningless)" if quick else ""
        sections[name] = f"{body}\n_measured {stamp}{mode}_\n"
        click.echo(f"bench: {name} done in {time.perf_counter() - start:.0f} s", err=True)
    header = (
        "# Benchmarks\n\nWritten by `make bench` (`python -m bench`); do not edit by hand. "
        "Each number is a ratio or rate measured side by side in one run.\n\n"
        f"Last run on {machine_line()}.\n"
    )
    body = "\n".join(f"<!-- bench:{n} -->\n{sections[n]}<!-- /bench:{n} -->\n" for n in sorted(sections))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(header + "\n" + body)
    click.echo(f"bench: wrote {output}", err=True)
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
