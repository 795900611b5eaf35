"""`lungseg profiles install`: `snakemake --profile slurm` / `--profile hybrid` as typed, with a temporary
HOME (the profiles are found by name in Snakemake's user profile directory), the refusal to overwrite
another profile of that name, --force, idempotence and uninstall."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from lungseg.cluster.profiles_install import install_one, state, uninstall

PROFILES = REPO / "profiles"
BIN = Path(sys.executable).parent


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """Environment with a fresh HOME and no XDG overrides: Snakemake's user profile dir is HOME/.config/snakemake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_") and k != "LUNGSEG_CONFIG"}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_DIRS=str(tmp_path / "site"),  # no /etc/xdg profiles
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "home").mkdir()
    return env


def profiles_cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lungseg", "profiles", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def user_dir(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".config/snakemake"


# Snakemake's words for a profile name it cannot resolve; they changed between releases: 9.27 says "no
# profile.yaml (or config.yaml) found", 8.x "profile given but no config.yaml found" (pyproject asks for 9.27+).
PROFILE_NOT_FOUND = re.compile(r"no (profile\.yaml \(or )?config\.yaml\)? found")


def demo_workdir(path: Path) -> Path:
    """A workflow directory with its own config: partition names that only this config has."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["cluster"].update(cpu_partition="hpc-cpu-x", gpu_partition="hpc-gpu-x", cloud_partition="cloud-x")
    (path / "config").mkdir(parents=True)
    (path / "config/config.yaml").write_text(yaml.safe_dump(config))
    return path


def dry_run(env: dict[str, str], workdir: Path, profile: str) -> str:
    """`snakemake --profile PROFILE -n` typed in the workflow directory (dry run: nothing is submitted)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                           "--profile", profile, "--dry-run", "--printshellcmds"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not PROFILE_NOT_FOUND.search(out)
    return out


def test_profiles_are_found_by_name_after_install(tmp_path: Path, home: dict[str, str]) -> None:
    workdir = demo_workdir(tmp_path / "wf")
    before = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n"], cwd=workdir, env=home,
                            capture_output=True, text=True, timeout=300)
    assert before.returncode != 0 and PROFILE_NOT_FOUND.search(before.stderr), before.stderr  # the issue

    proc = profiles_cli(home, "install", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    for name in ("slurm", "hybrid"):
        link = user_dir(home) / name
        assert link.is_symlink() and link.resolve() == (PROFILES / name).resolve()  # the checkout's, kept current
        assert f"snakemake --profile {name}" in proc.stdout
    assert proc.stderr == ""

    out = dry_run(home, workdir, "slurm")
    assert "Using profiles slurm and workflow specific profile" in out
    # the profile's settings, read from the workflow directory's config/config.yaml
    assert "slurm_partition=hpc-cpu-x" in out and "runtime=120" in out
    out = dry_run(home, workdir, "hybrid")
    assert "Using profiles hybrid and workflow specific profile" in out
    assert "slurm_partition=hpc-cpu-x" in out  # preprocessing: the HPC side (the jobs before the split)
    assert "slurm_partition=cloud-x" in out  # everything else: the cloud side

    listed = profiles_cli(home, "list", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    assert f"--profile slurm: {user_dir(home) / 'slurm' / 'config.v8+.yaml'}  (lungseg's, this checkout)" in listed.stdout
    assert "--profile lungseg-slurm: not found" in listed.stdout


def test_install_is_idempotent(tmp_path: Path, home: dict[str, str]) -> None:
    first = profiles_cli(home, "install")
    links = {p.name: os.readlink(p) for p in user_dir(home).iterdir()}
    second = profiles_cli(home, "install")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert {p.name: os.readlink(p) for p in user_dir(home).iterdir()} == links
    assert sorted(links) == ["hybrid", "slurm"]
    assert second.stdout.count("already installed:") == 2 and second.stderr == ""


def test_another_slurm_profile_is_left_alone(tmp_path: Path, home: dict[str, str]) -> None:
    theirs = user_dir(home) / "slurm"
    theirs.mkdir(parents=True)
    (theirs / "config.yaml").write_text("executor: slurm\njobs: 7\n")
    proc = profiles_cli(home, "install")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, with the name to use instead
    assert f"{theirs} is another profile, not lungseg's: left as it is" in line
    assert "snakemake --profile lungseg-slurm" in line and "--force" in line
    assert (theirs / "config.yaml").read_text() == "executor: slurm\njobs: 7\n" and not theirs.is_symlink()
    assert (user_dir(home) / "lungseg-slurm").resolve() == (PROFILES / "slurm").resolve()
    assert (user_dir(home) / "hybrid").resolve() == (PROFILES / "hybrid").resolve()
    # again: nothing changes, the same advice
    again = profiles_cli(home, "install")
    assert again.returncode == 0 and again.stderr == proc.stderr
    assert "already installed: " + str(user_dir(home) / "lungseg-slurm") in again.stdout
    # the name as typed still reaches the user's own profile
    assert profiles_cli(home, "list", "slurm").stdout.splitlines()[0] == f"--profile slurm: {theirs / 'config.yaml'}"
    # uninstall removes lungseg's links only
    gone = profiles_cli(home, "uninstall")
    assert gone.returncode == 0
    assert sorted(p.name for p in user_dir(home).iterdir()) == ["slurm"] and (theirs / "config.yaml").is_file()


def test_force_sets_the_other_profile_aside(tmp_path: Path, home: dict[str, str]) -> None:
    theirs = user_dir(home) / "slurm"
    theirs.mkdir(parents=True)
    (theirs / "config.yaml").write_text("jobs: 7\n")
    proc = profiles_cli(home, "install", "--force", "slurm")
    assert proc.returncode == 0, proc.stderr
    assert theirs.is_symlink() and theirs.resolve() == (PROFILES / "slurm").resolve()
    assert (user_dir(home) / "slurm.before-lungseg/config.yaml").read_text() == "jobs: 7\n"
    assert not (user_dir(home) / "hybrid").exists()  # only the profile named


def test_both_names_taken_is_an_error(tmp_path: Path, home: dict[str, str]) -> None:
    for name in ("slurm", "lungseg-slurm"):
        (user_dir(home) / name).mkdir(parents=True)
        (user_dir(home) / name / "config.yaml").write_text("jobs: 1\n")
    proc = profiles_cli(home, "install", "slurm")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"lungseg profiles: error: {user_dir(home) / 'lungseg-slurm'} exists and is not "
                                   "lungseg's profile: left as it is; choose another name with --name-prefix, or "
                                   "replace it with --force")


def test_xdg_config_home_and_prefix(tmp_path: Path, home: dict[str, str]) -> None:
    env = dict(home, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = profiles_cli(env, "install", "--name-prefix", "lungseg-", "slurm", "hybrid", "local")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "xdg/snakemake").iterdir()) == [
        "lungseg-hybrid", "lungseg-local", "lungseg-slurm"]
    assert not user_dir(home).exists()


def test_links_to_lungseg_profiles_elsewhere_are_ours(tmp_path: Path) -> None:
    """A link to another checkout's profile (or a dead one, left by a checkout that moved) is replaced;
    a link to some other profile is not."""
    dest = tmp_path / "profiles.d"
    dest.mkdir()
    other = tmp_path / "old-checkout/profiles/slurm"
    other.mkdir(parents=True)
    (other / "config.v8+.yaml").write_text((PROFILES / "slurm/config.v8+.yaml").read_text())
    (dest / "slurm").symlink_to(other)
    assert state(dest / "slurm", PROFILES / "slurm") == "ours"
    out = install_one("slurm", PROFILES, dest)
    assert (out.action, out.name) == ("relinked", "slurm") and str(other) in out.note
    assert state(dest / "slurm", PROFILES / "slurm") == "current"

    (dest / "hybrid").symlink_to(tmp_path / "moved-away/profiles/hybrid")  # dead link, lungseg's layout
    assert install_one("hybrid", PROFILES, dest).action == "relinked"

    mine = tmp_path / "my-profiles/slurm"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("jobs: 3\n")
    (dest / "slurm").unlink()
    (dest / "slurm").symlink_to(mine)
    out = install_one("slurm", PROFILES, dest)
    assert out.name == "lungseg-slurm" and (dest / "slurm").resolve() == mine
    assert uninstall(["slurm", "hybrid"], PROFILES, dest) == [dest / "lungseg-slurm", dest / "hybrid"]
    assert (dest / "slurm").resolve() == mine


def test_help_has_examples() -> None:
    for args in ([], ["install"], ["list"], ["uninstall"]):
        proc = subprocess.run([sys.executable, "-m", "lungseg", "profiles", *args, "--help"], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and "lungseg profiles install" in proc.stdout and "examples:" in proc.stdout
