"""The ``ftcore`` command line: ``create_cli(app)`` builds the click group; plugins add commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .app import App
from .errors import FtcoreError
from .parts import KINDS
from .ui import console

OVERRIDES_HELP = "key=value overrides with dotted paths, e.g. train.lr=1e-4 data.pack=false"


def _report_plugin_failures(app: App) -> None:
    """One warning line on stderr per failed plugin, now and whenever collecting parts finds more
    (with ``--strict-plugins`` an error instead)."""
    if app.warn is None:
        app.warn = lambda line: click.echo(line, err=True)
    app.report_plugin_failures()


def _part_rows(app: App, kinds: list[str], pattern: str | None) -> list[dict[str, str]]:
    rows = []
    for kind in kinds:
        for part in app.parts.kind(kind):
            if pattern and pattern.lower() not in f"{part.name} {part.description}".lower():
                continue
            rows.append({"kind": kind, "name": part.name, "plugin": part.owner, "description": part.description})
    return rows


def _list(app: App, kind: str | None, pattern: str | None, as_json: bool) -> None:
    kinds = [kind] if kind else list(KINDS)
    rows = _part_rows(app, kinds, pattern)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.table import Table

    out = console()
    if pattern:  # only the categories with a match
        kinds = [k for k in kinds if any(r["kind"] == k for r in rows)]
        if not kinds:
            where = kind or "any category"
            out.print(f"nothing matches {pattern!r} (in the names and descriptions of {where})", markup=False)
            return
    for k in kinds:
        table = Table(title=k, title_justify="left", show_edge=False)
        for col in ("name", "plugin", "description"):
            table.add_column(col)
        for row in (r for r in rows if r["kind"] == k):
            table.add_row(escape(row["name"]), escape(row["plugin"]), escape(row["description"]))
        out.print(table)
        out.print()


def _plugins(app: App, as_json: bool) -> None:
    app.parts  # collecting parts finds the plugins that fail while registering
    infos = sorted(app.pm.all_infos(), key=lambda i: (not i.builtin, i.name, i.dist))
    rows = [
        {
            "name": i.name,
            "distribution": i.dist,
            "version": i.version,
            "source": i.source,
            "builtin": i.builtin,
            "hooks": i.hooks,
            "status": "broken" if i.error else "ok",
            "error": i.error,
        }
        for i in infos
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False)
    for col in ("plugin", "distribution", "version", "source", "hooks"):
        table.add_column(col)
    for r in rows:
        hooks = ", ".join(h.removeprefix("register_") for h in r["hooks"])
        if r["error"]:
            hooks = f"[red]broken, skipped: {escape(r['error'])}[/red]"
        table.add_row(r["name"], r["distribution"], r["version"], r["source"], hooks)
    console().print(table)


def print_plan(recipe: Any, app: App) -> None:
    """What ``run`` would build and where it would write, without loading anything heavy."""
    from .models.speed import describe

    d = recipe.data
    m, a, data, t, s = d["model"], d["adapter"], d["data"], d["train"], d["strategy"]
    quant = "" if m["quantization"] == "none" else f", {m['quantization']} quantized"
    adapter = "full fine-tune" if a["kind"] == "full" else f"{a['kind']} r={a['r']} alpha={a['alpha']} dropout={a['dropout']} targets={a['targets']}"
    paths = data["path"] if isinstance(data["path"], list) else [data["path"]]
    steps = f"{t['max_steps']} steps" if t.get("max_steps") else f"{t['epochs']} epoch(s)"
    hooks = ", ".join(h["name"] for h in d["hooks"]) or "none"
    lines = [
        f"recipe    {recipe.name}  ({recipe.source})",
        f"model     {m['builder']} from {m['path']}{quant}",
        f"adapter   {adapter}",
        f"data      {', '.join(map(str, paths))}",
        f"          format={data['format']} template={data['template']} max_length={data['max_length']} pack={data['pack']}",
        f"train     {steps}, lr {t['lr']} ({t['schedule']}, warmup {t['warmup_ratio']}), micro_batch {t['micro_batch'] or 'auto'} x grad_accum {t['grad_accum']}, precision {t['precision']}, seed {t['seed']}",
        f"speed     {describe(d)}",
        f"objective {' '.join([d['objective']['name'], *(f'{k}={v}' for k, v in d['objective'].items() if k != 'name')])}",
        f"strategy  {s['name']}",
        f"hooks     {hooks}",
        f"work_dir  {d['work_dir']}  (checkpoints every {t['save_every'] or 'end'} steps, keep {t['save_total_limit'] or 'all'})",
    ]
    click.echo("\n".join(lines))


def dry_run_data(recipe: Any, app: App) -> bool:
    """``run --dry-run``: read and check the data as ``ftcore data check`` does (False: a record has a
    problem); data or a model that a hook creates when the run starts is not there to check yet."""
    from .data.commands import check_recipe_data
    from .data.pipeline import data_paths
    from .recipe import created_by_hooks

    created = created_by_hooks(recipe.data, app.parts)
    if "data.path" in created and not all(p.exists() for p in data_paths(recipe["data"])):
        click.echo("data      not checked: a hook creates it when the run starts")
        return True
    encode = "model.path" not in created or (Path(recipe["model"]["path"]) / "config.json").is_file()
    return check_recipe_data(recipe, app.parts, console(), encode=encode)


def use_strategy(recipe: Any, parts: Any, name: str, why: str) -> None:
    """Switch the loaded, validated ``recipe`` to strategy ``name`` without validating it again:
    only ``strategy.name`` changes, so only it is checked: the strategy exists and takes every
    key the recipe gives in the section (the old strategy's defaults that it does not take go)."""
    from .recipe import SCHEMA

    section = recipe["strategy"]
    known = {*SCHEMA["strategy"], *parts.strategies.part(name).options}
    unknown = [k for k in section if k not in known]
    given = [k for k in unknown if f"strategy.{k}" in recipe.lines]  # a default validation filled in has no line
    if given:
        raise FtcoreError(f"strategy {name!r} takes no {', '.join(f'strategy.{k}' for k in given)} ({why})", where=recipe.lines[f"strategy.{given[0]}"])
    for key in unknown:
        del section[key]
    section["name"] = name
    recipe.lines["strategy.name"] = why


def create_cli(app: App | None = None) -> click.Group:
    """The root click group, with the core commands and every plugin's ``register_commands``."""
    app = app or App()

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="ftcore")
    @click.option("--strict-plugins", is_flag=True, envvar="FTCORE_STRICT_PLUGINS",
                  help="make any plugin failure an error (exit 2) instead of a warning; env FTCORE_STRICT_PLUGINS=1")
    @click.pass_context
    def cli(ctx: click.Context, strict_plugins: bool) -> None:
        """ftcore: fine-tune large language models with LoRA, QLoRA or full training.

        Typical flow: `ftcore list`, `ftcore copy RECIPE`, `ftcore run --recipe RECIPE`,
        `ftcore chat`, `ftcore merge`.
        """
        ctx.obj = app
        app.strict = strict_plugins
        _report_plugin_failures(app)
        owner = app.pm.command_owner(ctx.invoked_subcommand)
        if strict_plugins or (owner is not None and not owner.builtin):
            app.parts  # registration failures: all of them when strict, else whether this command's plugin is sound
        if owner is not None and owner.error:
            raise FtcoreError(f"command {ctx.invoked_subcommand!r} comes from plugin {owner.label}, which failed: {owner.error} ({owner.remedy})")

    @cli.command("list")
    @click.argument("kind", required=False, type=click.Choice(list(KINDS)))
    @click.option("-p", "--pattern", help="only parts whose name or description contains this")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    def list_cmd(kind: str | None, pattern: str | None, as_json: bool) -> None:
        """List registered parts (recipes, formats, templates, models, strategies, hooks)."""
        _list(app, kind, pattern, as_json)

    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="machine-readable output")
    def plugins_cmd(as_json: bool) -> None:
        """List plugins with their version, source and the hooks they implement."""
        _plugins(app, as_json)

    @cli.command("copy")
    @click.argument("recipe")
    @click.argument("dest", required=False, type=click.Path(dir_okay=True, path_type=Path))
    @click.option("--force", is_flag=True, help="overwrite an existing file")
    def copy_cmd(recipe: str, dest: Path | None, force: bool) -> None:
        """Write an editable copy of a registered RECIPE (to DEST or ./RECIPE.yaml)."""
        from .recipe import read_source

        text, _ = read_source(app.parts.recipes.part(recipe).target)
        dest = dest or Path(f"{recipe}.yaml")
        if dest.is_dir():
            dest = dest / f"{recipe}.yaml"
        if dest.exists() and not force:
            raise FtcoreError(f"{dest} already exists", hint="pass --force to overwrite it, or give another DEST")
        dest.write_text(text, encoding="utf-8")
        click.echo(f"wrote {dest}; edit it, then: ftcore run --recipe {dest}")

    @cli.command("show")
    @click.argument("recipe")
    @click.argument("overrides", nargs=-1)
    def show_cmd(recipe: str, overrides: tuple[str, ...]) -> None:
        """Print the fully resolved RECIPE (name or file) after extends and overrides."""
        from .recipe import load_recipe

        click.echo(load_recipe(recipe, app.parts, overrides).to_yaml(), nl=False)

    @cli.command("run")
    @click.option("--recipe", "-r", "recipe_ref", required=True, help="a registered recipe name or a YAML file")
    @click.argument("overrides", nargs=-1)
    @click.option("--work-dir", help="where checkpoints and logs go (overrides work_dir)")
    @click.option("--dry-run", is_flag=True, help="validate, read and check the data, print the plan; load no weights")
    @click.option("--resume", is_flag=False, flag_value="auto", default=None, help="resume: auto (latest checkpoint in work_dir) or a checkpoint PATH")
    @click.option("--trust-remote-code", is_flag=True, help="allow Python code shipped with the model to run (only for models whose code you trust)")
    @click.option("--nproc-per-node", help="processes on this machine (a number or auto = every GPU); env NPROC_PER_NODE")
    @click.option("--nnodes", type=int, help="machines taking part (env NNODES)")
    @click.option("--node-rank", type=int, help="this machine's rank, 0..nnodes-1 (env NODE_RANK)")
    @click.option("--master-addr", help="address of the rank-0 machine (env ADDR)")
    @click.option("--master-port", type=int, help="port on the rank-0 machine (env PORT)")
    def run_cmd(recipe_ref: str, overrides: tuple[str, ...], work_dir: str | None, dry_run: bool, resume: str | None, trust_remote_code: bool,
                nproc_per_node: str | None, nnodes: int | None, node_rank: int | None, master_addr: str | None, master_port: int | None) -> None:
        """Fine-tune with a recipe. OVERRIDES are key=value pairs, e.g. train.lr=1e-4."""
        from .recipe import load_recipe
        from .train.launch import Launch, relaunch, under_launcher
        from .train.preflight import check_remote_code, check_resume

        if resume and "=" in resume and not Path(resume).exists():  # `--resume key=value`: the flag, then an override
            overrides, resume = (*overrides, resume), "auto"
        recipe = load_recipe(recipe_ref, app.parts, overrides, work_dir=work_dir, check_paths=True)
        check_remote_code(recipe, trust_remote_code)
        check_resume(recipe, resume)
        launch = Launch.resolve(nproc_per_node, nnodes, node_rank, master_addr, master_port)
        overrides = tuple(overrides)
        if launch.world_size > 1 and not under_launcher():
            if not recipe["distributed"]:
                raise FtcoreError(f"recipe {recipe.name} runs on one device only (distributed: false)", hint="drop --nproc-per-node/--nnodes, or set distributed=true if you know it works")
            if recipe["strategy"]["name"] == "single":
                click.echo(f"running on {launch.world_size} processes: using strategy ddp (set strategy.name=zero2 etc. to choose)")
                overrides += ("strategy.name=ddp",)  # for the processes launched
                use_strategy(recipe, app.parts, "ddp", f"--nproc-per-node/--nnodes: single runs as ddp on {launch.world_size} processes")
        if dry_run:
            print_plan(recipe, app)
            if launch.world_size > 1:
                click.echo(f"launch    {launch.nproc_per_node} process(es) x {launch.nnodes} node(s), this node rank {launch.node_rank}, master {launch.master_addr}:{launch.master_port}")
            if not dry_run_data(recipe, app):
                sys.exit(1)
            return
        if launch.world_size > 1 and not under_launcher():
            args = ["--recipe", recipe_ref, *overrides] + (["--work-dir", work_dir] if work_dir else []) + (["--resume", resume] if resume else [])
            sys.exit(relaunch(launch, args + (["--trust-remote-code"] if trust_remote_code else [])))
        from .train.runner import run_training

        run_training(recipe, app.parts, resume=resume)

    app.pm.add_commands(cli)  # a plugin that fails here is skipped (reported by the group callback)
    return cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors print one clear message and exit 2."""
    try:
        cli = create_cli()
        code = cli.main(args=argv, prog_name="ftcore", standalone_mode=False)
        if isinstance(code, int) and code:  # a command's ctx.exit(n)
            sys.exit(code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FtcoreError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
