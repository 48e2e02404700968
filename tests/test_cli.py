"""The core CLI as a user types it: --version, list, copy, show, run --dry-run, and error output."""

from __future__ import annotations

import json

from ftcore import __version__

from helpers import run_cli


def test_version() -> None:
    proc = run_cli("--version", check=True)
    assert __version__ in proc.stdout


def test_list_every_kind_and_filter() -> None:
    proc = run_cli("list", check=True)
    for kind in ("recipes", "formats", "templates", "models", "strategies", "hooks"):
        assert kind in proc.stdout
    rows = json.loads(run_cli("list", "templates", "-p", "internlm2", "--json", check=True).stdout)
    assert rows and all("internlm2" in (r["name"] + r["description"]).lower() for r in rows)
    assert {r["kind"] for r in rows} == {"templates"}


def test_copy_writes_an_editable_recipe_and_refuses_to_overwrite(tmp_path) -> None:
    proc = run_cli("copy", "internlm2_qlora", str(tmp_path), check=True)
    out = tmp_path / "internlm2_qlora.yaml"
    assert out.is_file() and "builder: internlm2" in out.read_text()
    assert "ftcore run --recipe" in proc.stdout
    again = run_cli("copy", "internlm2_qlora", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr


def test_show_prints_the_resolved_recipe_with_overrides() -> None:
    proc = run_cli("show", "internlm2_qlora", "train.lr=1e-5", check=True)
    assert "lr: 1.0e-05" in proc.stdout and "quantization: nf4" in proc.stdout and "work_dir: ./work_dirs/internlm2_qlora" in proc.stdout


def test_run_dry_run_prints_the_plan(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "quickstart", "--dry-run", "--work-dir", str(tmp_path / "wd"), check=True)
    assert "model     internlm2 from" in proc.stdout and str(tmp_path / "wd") in proc.stdout
    assert not (tmp_path / "wd").exists()  # a dry run writes nothing


def test_user_errors_print_one_message_without_traceback(tmp_path) -> None:
    proc = run_cli("run", "--recipe", "no_such_recipe", "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no recipe called 'no_such_recipe'" in proc.stderr
    proc = run_cli("run", "--recipe", "internlm2_qlora", "--dry-run")
    assert proc.returncode == 2 and "model.path" in proc.stderr and "Traceback" not in proc.stderr
