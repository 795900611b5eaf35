"""Keyed pseudonyms and scrubbing of identifying values from anything lungseg writes.

Pseudonyms are HMAC-SHA256 of a DICOM value (SeriesInstanceUID for cases, PatientID for patients)
under a secret that only the site holds: stable across reruns with the same secret, and not
reversible or linkable without it (a plain hash of a UID would be). The secret comes from an
environment variable (default ``LUNGSEG_PSEUDONYM_KEY``) or a file; :data:`DEMO_SECRET` is public
and only allowed when asked for explicitly (demos, tests).

:class:`Scrubber` removes what must never leave the DICOM files (patient name, ID, birth date,
accession number, institution, and every instance UID) from text such as paths in error messages;
:func:`scrub_diagnostics` applies one to everything a command logs, warns or prints on a crash.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import re
import sys
import traceback
from pathlib import Path

import pydicom

from lungseg.ingest.errors import IngestError

DEFAULT_SECRET_ENV = "LUNGSEG_PSEUDONYM_KEY"
#: public, for demos and tests only (``--allow-default-secret``): pseudonyms made with it are linkable by anyone
DEMO_SECRET = "lungseg-public-demo-secret"
#: a DICOM UID: digits in at least four dot-separated components (e.g. 1.2.840.113619.2.55...), also
#: as a path component or inside a file name ("/1.2.840.../", "CT.1.2.840....dcm")
UID_PATTERN = re.compile(r"(?<!\d)(?<!\d\.)[0-2](?:\.\d+){3,}(?!\.?\d)")
#: the header values that identify a patient or an examination
STANDARD_UID_ROOT = "1.2.840.10008."
IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "OtherPatientIDs",
    "ReferringPhysicianName",
)
_MIN_SCRUB_LEN = 4  # shorter values ("M", "1") would scrub ordinary text


def resolve_secret(
    env_var: str = DEFAULT_SECRET_ENV, secret_file: Path | None = None, allow_default: bool = False
) -> str:
    """The pseudonym secret from ``secret_file`` or ``$env_var``; the public demo secret only if allowed."""
    if secret_file is not None:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise IngestError(
                secret_file, f"cannot be read ({exc.strerror})", "give a readable file holding the secret"
            ) from exc
        if not secret:
            raise IngestError(secret_file, "is empty", "write a long random secret into it")
        return secret
    secret = os.environ.get(env_var, "").strip()
    if secret:
        return secret
    if allow_default:
        return DEMO_SECRET
    raise IngestError(
        f"${env_var}",
        "is not set, so no pseudonym secret is available",
        f"export {env_var}=<long random secret kept at your site> (e.g. `openssl rand -hex 32`), "
        "or pass --allow-default-secret for demo data only",
    )


def add_secret_arguments(parser: argparse.ArgumentParser, purpose: str = "") -> None:
    """``--secret-env``, ``--secret-file`` and ``--allow-default-secret`` (read by :func:`resolve_secret`)."""
    suffix = f", {purpose}" if purpose else ""
    parser.add_argument(
        "--secret-env",
        default=DEFAULT_SECRET_ENV,
        metavar="VAR",
        help=f"environment variable holding the pseudonym secret{suffix} (default {DEFAULT_SECRET_ENV})",
    )
    parser.add_argument("--secret-file", type=Path, help=f"file holding the pseudonym secret (instead of the variable){suffix}")
    parser.add_argument(
        "--allow-default-secret",
        action="store_true",
        help=f"use lungseg's public demo secret when no secret is set (demo data only){suffix}",
    )


def keyed_hash(secret: str, kind: str, value: str) -> str:
    """Hex HMAC-SHA256 of ``kind:value`` under ``secret`` (``kind`` separates series from patients)."""
    return hmac.new(secret.encode(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def series_selector(secret: str, series_uid: str) -> str:
    """Selector of one series inside a folder that holds several (20 hex digits)."""
    return keyed_hash(secret, "series", series_uid)[:20]


def case_pseudonym(secret: str, series_uid: str) -> str:
    """Case ID of a series: ``c`` + 12 hex digits of its keyed hash."""
    return "c" + keyed_hash(secret, "series", series_uid)[:12]


def patient_pseudonym(secret: str, patient_id: str) -> str:
    """Patient pseudonym: ``p`` + 12 hex digits (cases of one patient share it, so splits stay by patient)."""
    return "p" + keyed_hash(secret, "patient", patient_id)[:12]


def _redact_uid(match: re.Match) -> str:
    """UIDs defined by the DICOM standard itself (transfer syntaxes, SOP classes) identify nobody."""
    return match.group(0) if match.group(0).startswith(STANDARD_UID_ROOT) else "<uid>"


class Scrubber:
    """Replaces identifying values learnt from DICOM headers, and any UID, in text."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def learn(self, ds) -> None:  # noqa: ANN001 - pydicom Dataset
        """Remember the identifying values of one dataset (name components too: 'DOE^JOHN' -> 'DOE', 'JOHN')."""
        for keyword in IDENTIFYING_KEYWORDS:
            value = ds.get(keyword)
            if value is None:
                continue
            values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
            for item in values:
                text = str(item).strip()
                self._add(text)
                for part in re.split(r"[\^=]", text):
                    self._add(part.strip())

    def learn_text(self, *values: str) -> None:
        for value in values:
            self._add(str(value).strip())

    def _add(self, text: str) -> None:
        if len(text) >= _MIN_SCRUB_LEN:
            self._values.add(text)

    def __call__(self, text: str) -> str:
        text = UID_PATTERN.sub(_redact_uid, str(text))
        for value in sorted(self._values, key=len, reverse=True):
            text = re.sub(re.escape(value), "<redacted>", text, flags=re.IGNORECASE)
        return text


class ScrubFilter(logging.Filter):
    """A handler filter that scrubs each record's message (and traceback) before it is written."""

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.scrub(record.getMessage()), ()
        if record.exc_info:
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


def scrub_diagnostics(scrub: Scrubber) -> None:
    """Make a command's diagnostics safe: pydicom's validation warnings (which quote header values) off,
    other warnings routed through logging, every record of the root logger's handlers and the traceback
    of an uncaught exception scrubbed with ``scrub`` (call after ``logging.basicConfig``)."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, ScrubFilter)]:
            handler.removeFilter(old)
        handler.addFilter(ScrubFilter(scrub))

    def excepthook(kind, value, tb) -> None:  # noqa: ANN001
        sys.stderr.write(scrub("".join(traceback.format_exception(kind, value, tb))))

    sys.excepthook = excepthook
