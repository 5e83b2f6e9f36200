"""Every command the documentation shows still works: each ``python scripts/...`` line of README.md and
results/README.md composes with its overrides, and each ``make ...`` is a real target whose recipe's
script calls compose too. The files are read at test time, so an edited README is checked as it stands."""

from __future__ import annotations

import itertools
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT, compose_config

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "results" / "README.md"]
CONF = REPO_ROOT / "conf"
PY_COMMAND = re.compile(r"(?:\.venv/bin/)?python3?\s+(scripts/[\w/]+\.py)([^\n`|#&;]*)")
MAKE_COMMAND = re.compile(r"(?:^|`)make\s+([^`\n#]*)", re.MULTILINE)


def doc_commands() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(doc, script, argument string) of every python command and (doc, arguments) of every make command."""
    python, make = [], []
    for doc in DOCS:
        text = doc.read_text()
        python += [(doc.name, m.group(1), m.group(2)) for m in PY_COMMAND.finditer(text)]
        make += [(doc.name, m.group(1).strip()) for m in MAKE_COMMAND.finditer(text)]
    return python, make


def _config_name(script: str) -> str:
    match = re.search(r'config_name="([^"]+)"', (REPO_ROOT / script).read_text())
    assert match, f"{script} is not a Hydra entry point"
    return match.group(1)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _override_sets(args: list[str]) -> list[list[str]]:
    """Hydra overrides of a documented command line, placeholders filled in and sweeps expanded.

    ``-m``/``--cfg job`` are dropped (composition is what they share); a placeholder (``<name>``, ``...``,
    ``$ds``) of a config group is tried with every option of the group, of a plain key it is left out; a
    sweep ``a,b,c`` over a group composes each choice, over a plain key its first value."""
    choices: list[list[str]] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--cfg", "-c", "--package", "-p"):
            skip = True
            continue
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = (CONF / key.lstrip("+~")).is_dir()
        if re.search(r"<[^>]*>|\.\.\.|\$", value):
            if group:
                choices.append([f"{key}={o}" for o in _options(key.lstrip("+~"))])
            continue
        if "," in value and not value.startswith(("[", "{")):
            values = value.split(",")
            choices.append([f"{key}={v}" for v in (values if group else values[:1])])
        else:
            choices.append([arg])
    return [list(combo) for combo in itertools.product(*choices)] if choices else [[]]


def _compose_all(script: str, args: str, tmp_path: Path) -> int:
    config_name = _config_name(script)
    overrides_sets = _override_sets(shlex.split(args))
    for overrides in overrides_sets:
        try:
            cfg = compose_config(config_name, overrides, tmp_path)
            body = {k: v for k, v in cfg.items() if k != "hydra"}
            OmegaConf.to_container(OmegaConf.create(body), resolve=True)  # a broken interpolation raises
        except Exception as err:  # noqa: BLE001 - report which documented command broke
            pytest.fail(f"`python {script} {args.strip()}` does not compose with {overrides}: {err}")
    return len(overrides_sets)


def test_docs_show_commands():
    python, make = doc_commands()
    assert len(python) >= 5 and len(make) >= 5  # the extraction itself still finds the documented commands


def test_every_documented_python_command_composes(tmp_path):
    python, _ = doc_commands()
    for _doc, script, args in python:
        assert (REPO_ROOT / script).is_file(), f"{script} (shown in {_doc}) does not exist"
        _compose_all(script, args, tmp_path)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_documented_make_command_is_a_target_whose_scripts_compose(tmp_path):
    _, make = doc_commands()
    for doc, args in sorted(set(make)):
        proc = subprocess.run(["make", "-n", *shlex.split(args)], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, f"`make {args}` (shown in {doc}) fails: {proc.stderr}"
        for match in PY_COMMAND.finditer(proc.stdout):
            _compose_all(match.group(1), match.group(2), tmp_path)


def test_dataset_layout_table_matches_the_configs():
    """README's `<data_dir>/<folder>/` for each dataset is where its conf/dataset/*.yaml reads."""
    rows = re.findall(r"\|\s*`dataset=(\w+)`\s*\|\s*`<data_dir>/([^/`]+)/", DOCS[0].read_text())
    assert rows, "README.md lost its dataset table"
    for name, folder in rows:
        root = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{name}.yaml").reader)["root"]
        assert root == f"${{paths.data_dir}}/{folder}", f"README puts {name} in <data_dir>/{folder}, conf in {root}"


def test_dataset_table_overrides_compose(tmp_path):
    """The README dataset table's `dataset=...` cells (e.g. `dataset=folder dataset.reader.root=...`) are
    overrides of scripts/run.py: they compose."""
    cells = re.findall(r"^\|[^|\n]*\|\s*`(dataset=[^`]*)`", DOCS[0].read_text(), re.MULTILINE)
    assert len(cells) >= 3, "README.md lost its dataset table"
    for cell in cells:
        _compose_all("scripts/run.py", cell, tmp_path)
