"""``ftcore plot WORK_DIR``: loss, learning rate (and a preference objective's rewards) against steps, as a PNG."""

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
    """Write a PNG of ``work_dir/metrics.jsonl``: loss, learning rate, and rewards when the objective reports them."""
    rows = read_metrics(work_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FtcoreError("plotting needs matplotlib", hint="pip install 'ftcore[plot]'") from None
    steps = [r["step"] for r in rows]
    panels = [("loss", ["loss", "eval_loss"] if any("eval_loss" in r for r in rows) else ["loss"]), ("learning rate", ["lr"])]
    rewards = sorted({k for r in rows for k in r if k.startswith("rewards/") and k != "rewards/accuracy"})
    if rewards:  # a preference objective's rewards, and how often the chosen answer wins
        panels.append(("reward", rewards))
    if any("rewards/accuracy" in r for r in rows):
        panels.append(("reward accuracy", ["rewards/accuracy"]))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, keys) in zip(axes[:, 0], panels):
        for key in keys:
            ax.plot([r["step"] for r in rows if key in r], [r[key] for r in rows if key in r], label=key.removeprefix("rewards/"))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(loc="best", fontsize="small")
    axes[-1, 0].set_xlabel("step")
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
