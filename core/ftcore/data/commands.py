"""The ``ftcore data`` command group: gathers the data commands (``convert.py``: convert, split,
self-cognition; ``inspect.py``: show, check; ``repeat.py``: repeat). Only click is imported when the CLI is built."""

from __future__ import annotations

import click

from .convert import convert_cmd, self_cognition_cmd, split_cmd
from .inspect import check_cmd, check_recipe_data, show_cmd
from .repeat import repeat_cmd

__all__ = ["check_recipe_data", "data"]  # check_recipe_data: ftcore.cli (run --dry-run) imports it from here


class _DataGroup(click.Group):
    """The ``data`` group; its help ends with the system prompt presets, read when help is asked for."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from .systems import presets_help

        formatter.write_paragraph()
        formatter.write_text("System prompt presets (data.system: NAME, or `ftcore data convert --system NAME`):")
        formatter.write(presets_help() + "\n")


@click.group("data", cls=_DataGroup)
def data() -> None:
    """Prepare datasets: convert formats, split train/test, make self-cognition data; show and check a recipe's data."""


for _command in (convert_cmd, split_cmd, self_cognition_cmd, repeat_cmd, show_cmd, check_cmd):
    data.add_command(_command)
