"""``ftcore data repeat``: a small dataset repeated N times into a new file (the XTuner tutorial's ``repeat.py``)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FtcoreError
from .cmdutil import console, esc


@click.command("repeat")
@click.argument("src", metavar="IN", type=click.Path(path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-n", "--times", type=click.IntRange(min=1), required=True, help="how many copies of the records OUT holds")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
def repeat_cmd(src: Path, dst: Path, times: int, force: bool) -> None:
    """Write the records of IN N times over into OUT, in order (e.g. a few dozen image-text pairs x 200,
    so a short fine-tune sees each often). IN is any data file or folder; OUT's suffix picks how it is
    written (.json, .jsonl, .csv, ...). Records are copied as they are: image paths stay valid when OUT
    is used with the same image folder."""
    from .files import check_output, write_records
    from .load import load_records

    check_output(dst, force)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise FtcoreError("OUT is IN: repeating a file into itself would overwrite the original", where=str(dst), hint="give a new file name as OUT")
    records = list(load_records(src))
    write_records(dst, records * times)
    console().print(f"[green]repeated[/green] {esc(src)} ({len(records)} records) x {times} -> {esc(dst)} ({len(records) * times} records)")
