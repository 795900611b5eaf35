"""`lungseg profiles`: make the project's Snakemake profiles findable by name (`--profile slurm`).

Snakemake looks for a profile given by name in the working directory, then in its user profile
directory (Linux: `$XDG_CONFIG_HOME/snakemake`, else `~/.config/snakemake`), then in its site
directory (`/etc/xdg/snakemake`). `install` puts a symbolic link there to each profile of this
checkout (`profiles/slurm`, `profiles/hybrid`), so that `snakemake --profile slurm` works from any
workflow directory and an update of the checkout updates the profile. A profile of that name that is
not lungseg's is left alone: lungseg's is installed as `lungseg-NAME` instead (`--force` sets the
other one aside as `NAME.before-lungseg` and takes the name). Running it again changes nothing.

The profiles hold no names or sizes: they read the `cluster` section of `config/config.yaml` in the
directory where snakemake runs (or of `$LUNGSEG_CONFIG`), and need the `snakemake` of the
environment where lungseg is installed (they import `lungseg.cluster.settings`).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

#: the profiles ``install`` makes findable by default (``local`` on request; ``default`` is the
#: workflow profile that Snakemake already reads in the repository)
DEFAULT_PROFILES = ("slurm", "hybrid")
CHOICES = ("slurm", "hybrid", "local")
#: the name lungseg's profile gets when the plain name belongs to another profile
FALLBACK_PREFIX = "lungseg-"
#: suffix of a profile set aside by ``install --force``
ASIDE_SUFFIX = ".before-lungseg"
#: text every lungseg cluster profile contains (how a link to another checkout's profile is recognised)
MARKER = "lungseg.cluster.settings"
PROFILE_FILE = "config.v8+.yaml"

EPILOG = """\
examples:
  lungseg profiles install                 # slurm and hybrid into Snakemake's user profile directory
  snakemake --profile slurm                # then, in a workflow directory with config/config.yaml
  snakemake --profile hybrid
  lungseg profiles list                    # what --profile NAME resolves to, here
  lungseg profiles install --name-prefix lungseg-   # as lungseg-slurm, lungseg-hybrid
  lungseg profiles install --force         # take the names even where another profile has them
  lungseg profiles install --site          # for every user of this machine (/etc/xdg/snakemake; root)
  lungseg profiles uninstall               # remove lungseg's links (never another profile)
  make install-profiles                    # the same as `lungseg profiles install`
"""


class ProfileInstallError(RuntimeError):
    """A profile could not be installed (message names the path and the way out)."""


@dataclass(frozen=True)
class Outcome:
    """What ``install`` did for one profile: ``installed``, ``current``, ``relinked``, ``replaced``."""

    profile: str
    name: str
    link: Path
    action: str
    note: str = ""


def snakemake_profile_dirs() -> tuple[Path, Path]:
    """(user, site) profile directories, exactly as Snakemake computes them."""
    try:
        from snakemake.common import get_appdirs

        dirs = get_appdirs()
    except ImportError:  # pragma: no cover - snakemake is a dependency; same computation
        from platformdirs import AppDirs

        dirs = AppDirs("snakemake", "snakemake")
    return Path(dirs.user_config_dir), Path(dirs.site_config_dir)


def _is_profiles_dir(path: Path) -> bool:
    return all((path / p / PROFILE_FILE).is_file() for p in DEFAULT_PROFILES)


def default_source() -> Path:
    """``profiles/`` of the checkout lungseg runs from, else of the working directory."""
    candidates = [Path(__file__).resolve().parents[3] / "profiles", Path.cwd() / "profiles"]
    for path in candidates:
        if _is_profiles_dir(path):
            return path
    raise ProfileInstallError("no lungseg profiles/ directory found (lungseg is not run from a checkout): "
                              "pass --from CHECKOUT/profiles")


def _lungseg_profile(target: Path) -> bool:
    """Is ``target`` a lungseg cluster profile directory (of this or another checkout)?"""
    try:
        return MARKER in (target / PROFILE_FILE).read_text(errors="replace")
    except OSError:
        return False


def state(link: Path, source: Path) -> str:
    """``missing``; ``current`` (a link to ``source``); ``ours`` (a link to lungseg's profile of another
    checkout, or a dead link to a ``profiles/NAME`` of the same name); ``foreign`` (anything else)."""
    if not os.path.lexists(link):
        return "missing"
    if not link.is_symlink():
        return "foreign"  # a real directory or file: someone's own profile, maybe a copy they edited
    if link.exists() and link.resolve() == source.resolve():
        return "current"
    target = Path(os.readlink(link))
    if link.exists():
        return "ours" if _lungseg_profile(link.resolve()) and target.name == source.name else "foreign"
    # a dead link (e.g. to a checkout that moved): ours if it has the layout of a lungseg checkout
    return "ours" if target.name == source.name and target.parent.name == "profiles" else "foreign"


def _set_aside(path: Path) -> Path:
    aside = path.with_name(path.name + ASIDE_SUFFIX)
    n = 1
    while os.path.lexists(aside):
        n += 1
        aside = path.with_name(f"{path.name}{ASIDE_SUFFIX}.{n}")
    path.rename(aside)
    return aside


def _link(link: Path, source: Path) -> None:
    """Create (or atomically replace) ``link`` -> ``source``."""
    tmp = link.with_name(f".{link.name}.lungseg-tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        tmp.unlink()
    tmp.symlink_to(source.resolve(), target_is_directory=True)
    os.replace(tmp, link)


def install_one(profile: str, source_dir: Path, dest: Path, prefix: str = "", force: bool = False) -> Outcome:
    """Make ``source_dir/profile`` findable as ``prefix + profile`` in ``dest``. A foreign profile of that
    name: with ``force`` it is set aside; else, without a prefix, lungseg's goes in as ``lungseg-PROFILE``."""
    source = source_dir / profile
    if not (source / PROFILE_FILE).is_file():
        raise ProfileInstallError(f"{source / PROFILE_FILE} not found: is {source_dir} lungseg's profiles/ directory?")
    name = prefix + profile
    link = dest / name
    found = state(link, source)
    if found == "current":
        return Outcome(profile, name, link, "current")
    dest.mkdir(parents=True, exist_ok=True)
    if found == "missing":
        _link(link, source)
        return Outcome(profile, name, link, "installed")
    if found == "ours":
        was = os.readlink(link)
        _link(link, source)
        return Outcome(profile, name, link, "relinked", f"was a link to {was}")
    if force:
        aside = _set_aside(link)
        _link(link, source)
        return Outcome(profile, name, link, "replaced", f"the other profile is now {aside}")
    fallback = FALLBACK_PREFIX + profile
    if name == fallback:
        raise ProfileInstallError(f"{link} exists and is not lungseg's profile: left as it is; choose another "
                                  "name with --name-prefix, or replace it with --force")
    outcome = install_one(profile, source_dir, dest, prefix=FALLBACK_PREFIX)
    note = (f"{link} is another profile, not lungseg's: left as it is; lungseg's is "
            f"`snakemake --profile {fallback}` (--force takes the name {name})")
    return Outcome(profile, outcome.name, outcome.link, outcome.action, note)


def install(profiles: list[str], source_dir: Path, dest: Path, prefix: str = "", force: bool = False) -> list[Outcome]:
    return [install_one(p, source_dir, dest, prefix, force) for p in profiles]


def uninstall(profiles: list[str], source_dir: Path, dest: Path, prefix: str = "") -> list[Path]:
    """Remove lungseg's links (plain name or ``lungseg-`` name); never another profile."""
    removed = []
    for profile in profiles:
        for name in dict.fromkeys((prefix + profile, FALLBACK_PREFIX + profile)):
            link = dest / name
            if state(link, source_dir / profile) in ("current", "ours"):
                link.unlink()
                removed.append(link)
    return removed


def resolved(name: str) -> Path | None:
    """The profile file ``snakemake --profile NAME`` reads from here (Snakemake's own lookup)."""
    from snakemake.cli import get_profile_dir

    found = get_profile_dir(name)
    return found[1] if found else None


# ---------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser, profiles_help: str, where: bool = True) -> None:
        p.add_argument("profiles", nargs="*", type=_profile_name, metavar="PROFILE",
                       help=f"{profiles_help}: {', '.join(CHOICES)} (default: {' '.join(DEFAULT_PROFILES)})")
        if where:
            dirs = p.add_mutually_exclusive_group()
            dirs.add_argument("--dest", type=Path, default=None, metavar="DIR",
                              help="profile directory (default: Snakemake's user profile directory: "
                                   "$XDG_CONFIG_HOME/snakemake, else ~/.config/snakemake on Linux)")
            dirs.add_argument("--site", action="store_true",
                              help="Snakemake's site profile directory, for every user of the machine "
                                   "(/etc/xdg/snakemake on Linux; needs root)")
        p.add_argument("--name-prefix", default="", metavar="PREFIX",
                       help="names PREFIX + profile, e.g. lungseg- for --profile lungseg-slurm (default: none)")
        p.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR",
                       help="the profiles/ directory to link to (default: the checkout lungseg runs from)")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    inst = action("install", "make lungseg's profiles findable by name (snakemake --profile slurm); "
                             "a link per profile into Snakemake's profile directory")
    common(inst, "profiles to install")
    inst.add_argument("--force", action="store_true",
                      help=f"where another profile has the name: set it aside as NAME{ASIDE_SUFFIX} and take the name")
    common(action("list", "what `snakemake --profile NAME` reads from this directory"), "profiles to show",
           where=False)
    common(action("uninstall", "remove lungseg's links (never another profile)"), "profiles to remove")


def _profile_name(text: str) -> str:
    if text not in CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a lungseg profile ({', '.join(CHOICES)})")
    return text


def run(args: argparse.Namespace) -> int:
    profiles = list(dict.fromkeys(args.profiles or DEFAULT_PROFILES))
    user, site = snakemake_profile_dirs()
    dest = getattr(args, "dest", None) or (site if getattr(args, "site", False) else user)
    try:
        source = (args.source if args.source is not None else default_source()).resolve()
        if args.action == "install":
            for out in install(profiles, source, dest, args.name_prefix, args.force):
                if out.note:
                    print(f"lungseg profiles: {out.note}", file=sys.stderr)
                what = {"current": "already installed", "installed": "installed", "relinked": "relinked",
                        "replaced": "installed"}[out.action]
                print(f"{what}: {out.link} -> {source / out.profile}  (snakemake --profile {out.name})")
            if dest.resolve() not in (user.resolve(), site.resolve()):
                print(f"note: {dest} is not a directory Snakemake searches ({user}, {site}): "
                      f"use --profile {dest}/NAME")
        elif args.action == "uninstall":
            for link in uninstall(profiles, source, dest, args.name_prefix):
                print(f"removed: {link}")
        else:
            for profile in profiles:
                for name in dict.fromkeys((args.name_prefix + profile, FALLBACK_PREFIX + profile)):
                    file = resolved(name)
                    if file is None:
                        print(f"--profile {name}: not found")
                        continue
                    mine = _lungseg_profile(file.parent) and file.parent.resolve() == (source / profile).resolve()
                    print(f"--profile {name}: {file}" + ("  (lungseg's, this checkout)" if mine else ""))
    except (ProfileInstallError, OSError) as exc:
        print(f"lungseg profiles: error: {exc}", file=sys.stderr)
        return 1
    return 0
