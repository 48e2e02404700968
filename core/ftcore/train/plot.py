"""``ftcore plot WORK_DIR``: loss and learning rate against steps, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import FtcoreError


def read_metrics(work_dir: Path) -> list[dict]:
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        raise FtcoreError(f"{path} does not exist", hint="train with the metrics_log hook (in every shipped recipe) to record metrics")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise FtcoreError("not a JSON line", where=f"{path}:{i}") from None
    if not rows:
        raise FtcoreError(f"{path} has no steps yet")
    return rows


def plot_metrics(work_dir: Path, out: Path) -> Path:
    """Write a two-panel PNG (loss, learning rate) of ``work_dir/metrics.jsonl``."""
    rows = read_metrics(work_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FtcoreError("plotting needs matplotlib", hint="pip install 'ftcore[plot]'") from None
    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(steps, [r["loss"] for r in rows], color="tab:blue")
    ax1.set_ylabel("loss")
    ax1.grid(alpha=0.3)
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{work_dir.name}: {len(rows)} steps")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@click.command("plot")
@click.argument("work_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="PNG path (default WORK_DIR/metrics.png)")
def plot_cmd(work_dir: Path, output: Path | None) -> None:
    """Plot loss and learning rate of a run (WORK_DIR/metrics.jsonl) to a PNG."""
    out = plot_metrics(work_dir, output or work_dir / "metrics.png")
    click.echo(f"wrote {out}")
