"""What the ``ftcore data`` commands share: the app's parts, a rich console, and the lines that report a format's drops and skips.

Only click is imported at module level (rich when a command prints), so ``ftcore --help`` stays fast.
"""

from __future__ import annotations

from typing import Any

import click


def app_parts(ctx: click.Context) -> Any:
    """The registered parts of the running ``ftcore`` app (the root command keeps it as ``ctx.obj``)."""
    app = ctx.find_root().obj
    if app is None:
        raise click.UsageError("the data commands run under the `ftcore` command group, which finds the installed plugins")
    return app.parts


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def esc(value: Any) -> str:
    """``value`` as text that rich prints as is (no markup)."""
    from rich.markup import escape

    return escape(str(value))


def print_report(out: Any, report: Any) -> None:
    """The records a ``FormatReport`` says were dropped on purpose or skipped as malformed."""
    if report.dropped:
        more = ", ..." if report.dropped > len(report.dropped_at) else ""
        out.print(f"  dropped {report.dropped} record(s) on purpose (e.g. <nooutput>): {', '.join(report.dropped_at)}{more}", markup=False)
    if report.skipped:
        out.print(f"  [yellow]skipped {report.skipped} malformed record(s):[/yellow]")
        for problem in report.problems:
            out.print(f"    - {problem}", markup=False)
        if report.skipped > len(report.problems):
            out.print(f"    - ... and {report.skipped - len(report.problems)} more")
