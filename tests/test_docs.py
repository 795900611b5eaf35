"""The documentation: generated pages current, every subcommand answers --help, the README's DAG names
real rules, and the site builds with `mkdocs build --strict` (every broken link or anchor fails)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO

from lungseg import docs_reference
from lungseg.cli import COMMANDS, main

STALE = "is out of date: run `make docs-reference` and commit the result"


def _compare(page: str, text: str) -> None:
    path = REPO / page
    assert path.is_file(), f"{page} is missing: run `make docs-reference`"
    current = path.read_text()
    if current != text:
        diff = [f"- {a}\n+ {b}" for a, b in zip(current.splitlines(), text.splitlines(), strict=False) if a != b][:3]
        pytest.fail(f"{page} {STALE}; first differences:\n" + "\n".join(diff))


def test_cli_reference_is_current():
    _compare("docs/reference/cli.md", docs_reference.cli_reference_markdown())


def test_config_reference_is_current():
    _compare("docs/reference/configuration.md",
             docs_reference.config_reference_markdown(REPO / "workflow/schemas/config.schema.yaml",
                                                      REPO / "config/config.yaml"))


def test_benchmarks_page_is_current():
    _compare("docs/benchmarks.md", docs_reference.benchmarks_markdown(REPO / "benchmarks/results"))


def _schema_keys(spec: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, sub in spec.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        keys += [path, *_schema_keys(sub, path)]
    return keys


def test_config_reference_lists_every_schema_key_with_its_default():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    text = docs_reference.config_reference_markdown()
    rows = {m.group(1): line for line in text.splitlines() if (m := re.match(r"\| `([^`]+)`", line))}
    keys = _schema_keys(schema)
    assert keys and set(keys) <= set(rows), sorted(set(keys) - set(rows))
    assert "`1.5`" in rows["ingest.max_gap"] and "> 0" in rows["ingest.max_gap"]
    assert "`crop`" in rows["train.roi"] and "`none`, `crop`, `mask`" in rows["train.roi"]


def test_cli_reference_lists_every_subcommand_and_option():
    text = docs_reference.cli_reference_markdown()
    for name in COMMANDS:
        assert f"## `lungseg {name}`" in text, name
    for option in ("--target-spacing", "--lung-mask", "--fed-fractions", "--grid"):
        assert f"`{option}`" in text, option


def _help_cases() -> list[list[str]]:
    """Every subcommand, and every sub-subcommand (``lungseg report cohort``), as argv for --help."""
    cases = []
    for name in COMMANDS:
        cases.append([name])
        parser = docs_reference.command_parser(name)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                cases += [[name, sub] for sub in action.choices]
    return cases


@pytest.mark.parametrize("argv", _help_cases(), ids=lambda argv: " ".join(argv))
def test_every_subcommand_answers_help(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, f"lungseg {' '.join(argv)} --help exited {exit_info.value.code}"
    assert out.getvalue().startswith(f"usage: lungseg {' '.join(argv)}"), out.getvalue()[:300]


def test_lungseg_help_from_the_entry_point():
    proc = subprocess.run([sys.executable, "-m", "lungseg", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(name in proc.stdout for name in COMMANDS)


def _workflow_rules() -> set[str]:
    rules = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]:
        text = path.read_text()
        rules |= set(re.findall(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:", text, flags=re.M))
        rules |= set(re.findall(r"^\s*use rule \w+ as (\w+)", text, flags=re.M))
    return rules


def test_readme_is_one_screen_with_the_two_commands_and_a_dag_of_real_rules():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo   #" in readme and "make test   #" in readme
    rules = _workflow_rules()
    assert {"ingest", "train", "predict", "split"} <= rules
    dag = re.search(r"```text\n(.*?)```", readme, flags=re.S).group(1)
    words = set(re.findall(r"[a-z][a-z0-9_]*", dag))
    not_rules = {w for w in words if "_" in w or w in {"ingest", "split", "train", "predict", "evaluate", "aggregate",
                                                        "compare", "scaling"}} - rules
    assert not not_rules, f"the README's DAG names rules that do not exist: {sorted(not_rules)}"
    missing = {r for r in rules - {"all"} if f"`{r}`" not in readme and r not in words}
    assert not missing, f"rules the README does not mention: {sorted(missing)}"
    pipeline = (REPO / "docs/explanation/pipeline.md").read_text()
    missing = {r for r in rules if f"`{r}`" not in pipeline}
    assert not missing, f"rules docs/explanation/pipeline.md does not describe: {sorted(missing)}"


def test_every_benchmark_result_says_command_machine_and_date():
    files = sorted((REPO / "benchmarks/results").glob("*.json"))
    assert files, "no benchmark result files in benchmarks/results/"
    for path in files:
        data = json.loads(path.read_text())
        provenance = data.get("provenance") or {}
        assert provenance.get("command") or data.get("command"), f"{path.name}: no command"
        assert provenance.get("date") or data.get("date"), f"{path.name}: no date"
        assert provenance.get("machine") or isinstance(data.get("machine"), dict), f"{path.name}: no machine"


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs / mkdocs-material not installed (pip install -e '.[test]' installs them)")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "site/reference/cli/index.html").is_file()
