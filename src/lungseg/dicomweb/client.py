"""A thin layer over ``dicomweb-client``: credentials from environment variables, timeouts, one-line errors.

Credentials never come from a config file or the URL: the config (or the command line) names the
environment variables that hold them (``user_env``, ``password_env``). Every call of :class:`Pacs`
turns what can go wrong on the wire into a :class:`DicomwebError` of one line: the server
unreachable, no answer in time, wrong credentials (401) or a forbidden action (403), and a study
or series that is gone (404, :class:`GoneError`, which callers may treat as "skip it"). Messages name
the server and what was being done, never a UID or any other header value.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.errors import InvalidDicomError

#: (connect, read) seconds: a server that does not accept the connection within 5 s is unreachable
DEFAULT_TIMEOUT = (5.0, 120.0)
#: results asked for per QIDO-RS request
QIDO_PAGE = 1000
#: attempts of a request the server answers 429/503/504 ("busy"), with exponential back-off
RETRY_ATTEMPTS = 3


class DicomwebError(RuntimeError):
    """A DICOMweb request failed; ``str()`` is one line naming the server, the action and the fix."""


class GoneError(DicomwebError):
    """The server answered 404 Not Found: the study, series or instance is no longer there."""


def read_credentials(user_env: str | None, password_env: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from the environment variables named ``user_env`` / ``password_env``.

    Neither named: no credentials (None). One named without the other, or a named variable unset or
    empty: a :class:`DicomwebError` saying which variable to export.
    """
    if not user_env and not password_env:
        return None
    if not user_env or not password_env:
        raise DicomwebError(
            "give both the user and the password environment variable names (user_env and password_env), or neither"
        )
    values = {}
    for what, name in (("user name", user_env), ("password", password_env)):
        values[what] = os.environ.get(name, "")
        if not values[what]:
            raise DicomwebError(
                f"${name} is not set: export the PACS {what} in it (lungseg reads credentials only from the environment)"
            )
    return values["user name"], values["password"]


def check_url(url: str) -> str:
    """The DICOMweb base URL without a trailing slash; refuses other schemes and credentials in the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DicomwebError(f"{url!r} is not a DICOMweb URL: give http(s)://HOST[:PORT]/PATH, e.g. http://localhost:8042/dicom-web")
    if parts.username or parts.password:
        raise DicomwebError(
            "the DICOMweb URL holds credentials: remove them from the URL and name environment variables holding them "
            "(--user-env / --password-env, or dicomweb.user_env / dicomweb.password_env)"
        )
    return url.rstrip("/")


def _uid(dataset: Mapping[str, Any], tag: str) -> str:
    """A UID value of a DICOM JSON dataset (QIDO answer), '' when absent."""
    values = dataset.get(tag, {}).get("Value") or [""]
    return str(values[0])


class Pacs:
    """One DICOMweb server, reached with the credentials named by ``user_env`` / ``password_env``."""

    def __init__(
        self,
        url: str,
        *,
        user_env: str | None = None,
        password_env: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = check_url(url)
        self.user_env, self.password_env, self.timeout = user_env, password_env, timeout
        session = _WildcardSession()
        session.auth = read_credentials(user_env, password_env)
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout)
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # its INFO lines name every UID
        self.client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=250)

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def errors(self, action: str, gone: bool = False) -> Iterator[None]:
        """Translate what ``requests`` raises while doing ``action`` into a one-line :class:`DicomwebError`;
        ``gone``: a 404 means the object was deleted (:class:`GoneError`), not a wrong URL."""
        try:
            yield
        except requests.exceptions.HTTPError as exc:
            raise self._http_error(exc.response, action, gone) from None
        except requests.exceptions.ConnectTimeout:
            raise DicomwebError(
                f"cannot reach the DICOMweb server {self.url} while {action}: no connection within {self.timeout[0]:g} s; "
                "check the URL and that the server runs (a local one: lungseg pacs start)"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else type(_root_cause(exc)).__name__
            raise DicomwebError(
                f"cannot reach the DICOMweb server {self.url} while {action} ({reason}): check the URL and that the server "
                "runs (a local one: lungseg pacs start)"
            ) from None
        except requests.exceptions.Timeout:
            raise DicomwebError(
                f"the DICOMweb server {self.url} did not answer within {self.timeout[1]:g} s while {action}: it may be "
                "overloaded; try again later"
            ) from None
        except requests.exceptions.RequestException as exc:  # a cut stream, a malformed answer
            raise DicomwebError(f"the DICOMweb server {self.url} failed while {action} ({type(exc).__name__})") from None
        except (InvalidDicomError, EOFError, ValueError) as exc:  # a part that is not a whole DICOM object
            raise DicomwebError(f"the DICOMweb server {self.url} sent a malformed answer while {action} "
                                f"({type(exc).__name__})") from None

    def _http_error(self, response: requests.Response | None, action: str, gone: bool) -> DicomwebError:
        status = response.status_code if response is not None else 0
        if status == 401:
            fix = (f"check ${self.user_env} and ${self.password_env}" if self.user_env
                   else "it needs credentials: name the environment variables holding them with --user-env / "
                        "--password-env (dicomweb.user_env / dicomweb.password_env)")
            return DicomwebError(
                f"the DICOMweb server {self.url} refused the credentials (HTTP 401 Unauthorized) while {action}: {fix}"
            )
        if status == 403:
            return DicomwebError(
                f"the DICOMweb server {self.url} forbids this user {action} (HTTP 403 Forbidden): ask its administrator "
                "for the permission, or use another account"
            )
        if status == 404 and gone:
            return GoneError(f"{action}: not found on {self.url} (HTTP 404): deleted since it was queried?")
        if status == 404:
            return DicomwebError(
                f"the DICOMweb server {self.url} has no such service (HTTP 404 Not Found) while {action}: check the URL's "
                "path (Orthanc: http://HOST:8042/dicom-web)"
            )
        reason = response.reason if response is not None else "no response"
        return DicomwebError(f"the DICOMweb server {self.url} answered HTTP {status} {reason} while {action}")

    # ------------------------------------------------------------------ QIDO-RS

    def search_studies(self, filters: Mapping[str, str]) -> list[dict[str, Any]]:
        """Studies matching ``filters`` (DICOM keywords -> QIDO values), every page."""
        with self.errors("querying studies (QIDO-RS)"):
            return _all_pages(self.client.search_for_studies, "0020000D", search_filters=dict(filters))

    def search_series(
        self, study_uid: str, filters: Mapping[str, str], what: str = "a study", fields: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Series of one study matching ``filters`` (``what`` names the study in messages, never its UID),
        with the attributes ``fields`` besides the server's defaults."""
        with self.errors(f"querying the series of {what} (QIDO-RS)", gone=True):
            return _all_pages(self.client.search_for_series, "0020000E", study_uid, search_filters=dict(filters),
                              fields=list(fields) or None)

    def instance_uids(self, study_uid: str, series_uid: str, what: str = "a series") -> list[str]:
        """SOPInstanceUIDs of one series."""
        with self.errors(f"listing the instances of {what} (QIDO-RS)", gone=True):
            found = _all_pages(self.client.search_for_instances, "00080018", study_uid, series_uid, fields=["SOPInstanceUID"])
        return [uid for uid in (_uid(item, "00080018") for item in found) if uid]

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str, what: str = "an object") -> bool:
        """Whether QIDO-RS finds one instance."""
        with self.errors(f"querying {what} (QIDO-RS)"):
            found = self.client.search_for_instances(study_uid, series_uid, search_filters={"SOPInstanceUID": sop_uid})
        return any(_uid(item, "00080018") == sop_uid for item in found)

    # ------------------------------------------------------------------ WADO-RS / STOW-RS

    def iter_series(self, study_uid: str, series_uid: str, what: str = "a series") -> Iterator[pydicom.Dataset]:
        """The instances of one series as they stream in (one multipart request)."""
        with self.errors(f"retrieving {what} (WADO-RS)", gone=True):
            yield from self.client.iter_series(study_uid, series_uid)

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str, what: str = "an instance") -> pydicom.Dataset:
        with self.errors(f"retrieving {what} (WADO-RS)", gone=True):
            return self.client.retrieve_instance(study_uid, series_uid, sop_uid)

    def store(self, datasets: Sequence[pydicom.Dataset], what: str = "objects") -> pydicom.Dataset:
        """STOW-RS; a :class:`DicomwebError` when the server reports any instance as failed."""
        with self.errors(f"storing {what} (STOW-RS)"):
            answer = self.client.store_instances(list(datasets))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise DicomwebError(
                f"the DICOMweb server {self.url} refused {len(failed)} of {len(datasets)} {what} (STOW-RS failure reason "
                f"{', '.join(reasons)}): check that it accepts this SOP class"
            )
        return answer


class _WildcardSession(requests.Session):
    """Sends the QIDO-RS wildcards ``*`` and ``?`` of query values as they are, not percent-encoded (RFC 3986
    allows both in a query): Orthanc 1.10 with DICOMweb 1.7 (Debian 12) does not decode query values, so a
    ``%2A`` would never match; servers that decode see the same value either way."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if request.url and "?" in request.url:
            base, _, query = request.url.partition("?")
            request.url = f"{base}?{query.replace('%2A', '*').replace('%3F', '?')}"
        return super().send(request, **kwargs)


def _all_pages(search: Callable[..., list[dict[str, Any]]], key: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, page by page (``limit``/``offset``), each once. A page shorter than
    :data:`QIDO_PAGE` or holding nothing new ends it: some servers ignore ``offset`` for some queries (Orthanc
    1.10 with ``ModalitiesInStudy``), where dicomweb-client's ``get_remaining`` would loop for ever."""
    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    while True:
        page = search(*args, limit=QIDO_PAGE, offset=len(results), **kwargs)
        new = [item for item in page if _uid(item, key) not in seen]
        results += new
        seen.update(_uid(item, key) for item in new)
        if len(page) < QIDO_PAGE or not new:
            return results


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return exc
