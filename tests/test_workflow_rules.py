"""The workflow's rules as Snakemake loads them: every rule but ``all`` has a log and a benchmark (the run-time
page of the report reads the benchmarks), ``make dag`` draws the job graph on a fresh clone; and ``lungseg``
without a known command leaves through argparse."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

#: rules with neither: the default target only collects the final outputs
NO_LOG_OR_BENCHMARK = {"all", "export_seg_all", "dicomweb_store_all"}  # targets only: no job of their own
#: loads the workflow in ``workdir`` (argv[1]) and prints {rule: [has log, has benchmark]} as JSON
_LIST_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

with SnakemakeApi(OutputSettings()) as api:
    workflow = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                            storage_settings=StorageSettings(), snakefile=Path(sys.argv[2]), workdir=Path(sys.argv[1]))
    rules = {r.name: [bool(r.log), r.benchmark is not None] for r in workflow._workflow.rules}
print("RULES " + json.dumps(rules))
"""
#: ``rule NAME:``, ``checkpoint NAME:`` and ``use rule X as NAME ...`` in a rules file (also indented, under an if)
_DECLARED = re.compile(r"^\s*(?:rule|checkpoint)\s+(\w+)\s*:|^\s*use\s+rule\s+\w+\s+as\s+(\w+)", re.M)


def _config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section][name] = value
        else:
            config[section] = value
    return config


#: configs that together switch on every conditional rule (demo cohort; discover + a sweep table; the nodule
#: target with an external test set)
CONFIGS = {
    "demo": _config(),
    "discover_sweep": _config(source="discover", report__sweep="sweeps/scaling"),
    "nodule_external": _config(train__label="nodule",
                               external_test={"name": "lidc", "cases": str(REPO / "config/lidc_external.tsv")}),
    "images": _config(source="images", images={"root": "data/xray"}, lung_mask={"method": "radiograph_otsu"},
                      train__hu_window=[0, 1000], train__roi="none"),
    "dicomweb_export": _config(source="dicomweb", dicomweb={"url": "http://localhost:8042/dicom-web"},
                               export={"dicom_seg": True, "dicomweb": True, "folder": "exports"}),
}


def _loaded_rules(workdir: Path, config: dict) -> dict[str, list[bool]]:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-c", _LIST_RULES, str(workdir), str(REPO / "Snakefile")], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RULES ")), None)
    assert proc.returncode == 0 and line, f"loading the workflow failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(line.removeprefix("RULES "))


@pytest.fixture(scope="module")
def loaded_rules(tmp_path_factory) -> dict[str, list[bool]]:
    """Every rule of the workflow as Snakemake defines it, over :data:`CONFIGS`."""
    rules: dict[str, list[bool]] = {}
    for name, config in CONFIGS.items():
        rules.update(_loaded_rules(tmp_path_factory.mktemp(name), config))
    return rules


def test_every_rule_has_a_log_and_a_benchmark(loaded_rules):
    missing = {name: [what for what, has in zip(("log", "benchmark"), flags) if not has]
               for name, flags in loaded_rules.items() if name not in NO_LOG_OR_BENCHMARK and not all(flags)}
    assert not missing, f"rules without a log or benchmark directive: {missing}"


def test_every_declared_rule_was_checked(loaded_rules):
    """The rules files declare no rule that the configs above leave out (a new conditional rule needs one)."""
    declared = {a or b for path in [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
                for a, b in _DECLARED.findall(path.read_text())}
    assert declared - set(loaded_rules) == set(), "add a config to CONFIGS that loads these rules"
    assert {"all", "demo_case", "discover", "sweep_table", "train", "scaling"} <= declared


def test_make_dag_on_a_fresh_clone(tmp_path):
    """`make dag` (snakemake --dag piped through graphviz's dot) without a results/ folder."""
    missing = [tool for tool in ("dot", "make") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not found: install the Debian packages graphviz / make "
                    "(listed in .ci/apt-packages.txt)")
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "Snakefile"):
        shutil.copy2(REPO / name, clone / name)
    for name in ("config", "workflow", "envs"):
        shutil.copytree(REPO / name, clone / name, ignore=shutil.ignore_patterns("__pycache__"))
    (clone / ".venv").symlink_to(Path(sys.prefix))  # this test's environment stands for `make install`'s
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("LUNGSEG_CONFIG", None)
    proc = subprocess.run(["make", "-o", ".venv/.installed", "dag"], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"make dag failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    svg = (clone / "results/dag.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for rule in ("demo_case", "ingest", "split", "all"):  # the jobs after the split checkpoint come once it has run
        assert f">{rule}<" in svg, f"rule {rule} is not in the drawn DAG"
    assert not (clone / "results/dag.dot").exists()


@pytest.mark.parametrize("argv, code", [([], 0), (["--help"], 0), (["--version"], 0), (["bogus"], 2), (["--"], 2),
                                        (["-x"], 2)])
def test_lungseg_without_a_known_command_exits_through_argparse(argv, code, capsys):
    """`lungseg` with no or an unknown command: argparse prints the help / version / error and exits (cli.main
    has no return after it)."""
    from lungseg.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    out = capsys.readouterr()
    assert (out.out + out.err).strip()
