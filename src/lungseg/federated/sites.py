"""Sites: pseudonymous site IDs and which cases each site holds (the ``site`` column of a case sheet)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lungseg.ingest.errors import IngestError

#: a site ID: a short pseudonym (letters, digits, '_', '-'); never a path, host name or patient identifier
SITE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
__all__ = ["SITE_PATTERN", "check_site_id", "case_id_of", "read_site_table", "site_cases"]


def check_site_id(site: str) -> str:
    """``site`` if it is a valid pseudonymous site ID, else ValueError (one line)."""
    if not SITE_PATTERN.fullmatch(site or ""):
        raise ValueError(f"site ID {site!r} must be a pseudonym of 1-32 letters, digits, '_' or '-' starting with a "
                         f"letter (e.g. site_a); not a path, host name or patient identifier")
    return site


def case_id_of(path: str | Path) -> str:
    """The case ID of an ingested case file (``results/cases/<case_id>.h5`` -> ``<case_id>``)."""
    return Path(path).name.removesuffix(".h5")


def read_site_table(path: str | Path) -> dict[str, str]:
    """case_id -> site from a case sheet (TSV with ``case_id`` and ``site`` columns)."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "site table not found", "pass the case sheet (with a site column) as --sites")
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if not {"case_id", "site"} <= set(reader.fieldnames or ()):
            raise IngestError(path, "no case_id and site columns", "add a site column (a pseudonym such as site_a per "
                              "case) to the case sheet")
        table: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            try:
                table[row["case_id"]] = check_site_id(row["site"])
            except ValueError as exc:
                raise IngestError(path, f"line {line}: {exc}", "use pseudonymous site IDs such as site_a") from None
    return table


def site_cases(cases: Iterable[str | Path], sites: Mapping[str, str], site: str) -> list[str]:
    """The case files of ``cases`` that belong to ``site`` (by case ID); a case without a site is an error."""
    missing = [case_id_of(c) for c in cases if case_id_of(c) not in sites]
    if missing:
        raise IngestError("site table", f"case(s) {', '.join(missing[:5])} have no site", "give every case a site")
    return [str(c) for c in cases if sites[case_id_of(c)] == site]


def sites_of(cases: Sequence[str | Path], sites: Mapping[str, str]) -> list[str]:
    """The sites holding ``cases``, sorted."""
    return sorted({sites[case_id_of(c)] for c in cases if case_id_of(c) in sites})
