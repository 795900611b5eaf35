"""``lungseg pacs start|stop``: a local Orthanc with its DICOMweb plugin, for users without a PACS and for tests.

``start`` writes ``DIR/orthanc.json`` (HTTP port on localhost only, storage in ``DIR/storage``, the
DICOMweb plugin at ``/dicom-web/``, no DICOM port; with ``--user`` the password is read from the
environment variable ``--password-env`` and HTTP authentication is on), starts Orthanc detached
(``DIR/orthanc.log``, pid in ``DIR/orthanc.pid``), waits until ``/system`` answers and prints the
DICOMweb URL. ``stop`` ends that Orthanc (SIGTERM, then SIGKILL after a grace period). The Debian
packages ``orthanc`` and ``orthanc-dicomweb`` provide the server and the plugin; ``$LUNGSEG_ORTHANC``
and ``$LUNGSEG_ORTHANC_DICOMWEB`` point at others.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

#: where Debian's orthanc-dicomweb puts the plugin (the first is a link to the versioned library)
PLUGIN_GLOBS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so*",
                "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so")
DEFAULT_PORT = 8042
CONFIG_NAME, PID_NAME, LOG_NAME = "orthanc.json", "orthanc.pid", "orthanc.log"


class OrthancError(RuntimeError):
    """Orthanc is missing, does not start, or cannot be stopped; ``str()`` is one line with the fix."""


@dataclass(frozen=True)
class OrthancServer:
    """A running local Orthanc: its folder, process id, HTTP port and credentials (None: open)."""

    folder: Path
    pid: int
    port: int
    auth: tuple[str, str] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"


def find_orthanc() -> tuple[Path, Path]:
    """``(Orthanc executable, DICOMweb plugin)``; an :class:`OrthancError` naming what is missing."""
    binary = os.environ.get("LUNGSEG_ORTHANC") or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.access(binary, os.X_OK):
        raise OrthancError(f"Orthanc not found ({binary}): install the Debian package orthanc, or set $LUNGSEG_ORTHANC")
    plugin = os.environ.get("LUNGSEG_ORTHANC_DICOMWEB") or next(
        (p for pattern in PLUGIN_GLOBS for p in sorted(glob.glob(pattern)) if os.path.isfile(p)), ""
    )
    if not plugin or not os.path.isfile(plugin):
        raise OrthancError(
            "the Orthanc DICOMweb plugin (libOrthancDicomWeb.so) was not found: install the Debian package "
            "orthanc-dicomweb, or set $LUNGSEG_ORTHANC_DICOMWEB"
        )
    return Path(binary), Path(plugin)


def free_port() -> int:
    """A TCP port free on localhost now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_config(folder: Path, port: int, plugin: Path, auth: tuple[str, str] | None) -> dict:
    """Orthanc's JSON configuration: HTTP on localhost only, no DICOM port, DICOMweb at /dicom-web/."""
    config = {
        "Name": "lungseg-local-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "DicomServerEnabled": False,
        "HttpCompressionEnabled": False,  # DICOM over loopback: gzip costs more than it saves
        "OverwriteInstances": True,
        "SaveJobs": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
        "AuthenticationEnabled": auth is not None,
    }
    if auth is not None:
        config["RegisteredUsers"] = {auth[0]: auth[1]}
    return config


def start_orthanc(
    folder: Path, port: int = DEFAULT_PORT, auth: tuple[str, str] | None = None, timeout: float = 60.0
) -> OrthancServer:
    """Start Orthanc detached with its config, storage and log in ``folder``; return once ``/system`` answers."""
    binary, plugin = find_orthanc()
    folder = Path(folder).resolve()
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    running = _running_pid(folder)
    if running is not None:
        raise OrthancError(f"an Orthanc of {folder} already runs (pid {running}): lungseg pacs stop --dir {folder}")
    config_path = folder / CONFIG_NAME
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold a password
    with os.fdopen(fd, "w") as f:
        json.dump(orthanc_config(folder, port, plugin, auth), f, indent=2)
    with open(folder / LOG_NAME, "ab") as log:
        process = subprocess.Popen(
            [str(binary), str(config_path)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=folder, start_new_session=True,
        )
    (folder / PID_NAME).write_text(f"{process.pid}\n")
    server = OrthancServer(folder, process.pid, port, auth)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (folder / PID_NAME).unlink(missing_ok=True)
            raise OrthancError(
                f"Orthanc exited with status {process.returncode} at start; last log line: {_last_log_line(folder)}"
            )
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{server.http_url}/system", auth=auth, timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    stop_orthanc(folder)
    raise OrthancError(f"Orthanc did not answer on port {port} within {timeout:g} s; last log line: {_last_log_line(folder)}")


def stop_orthanc(folder: Path, grace: float = 20.0) -> bool:
    """Stop the Orthanc started for ``folder`` (True), or say there was none (False)."""
    folder = Path(folder).resolve()
    pid = _running_pid(folder)
    if pid is None:
        (folder / PID_NAME).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    (folder / PID_NAME).unlink(missing_ok=True)
    return True


def _running_pid(folder: Path) -> int | None:
    """The pid in ``folder/orthanc.pid`` if that process still is this folder's Orthanc (not a reused pid)."""
    try:
        pid = int((folder / PID_NAME).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(folder / CONFIG_NAME).encode() in cmdline and _alive(pid) else None


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child that exited: reap it
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _last_log_line(folder: Path) -> str:
    try:
        lines = [line for line in (folder / LOG_NAME).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


# ---------------------------------------------------------------------------- command line


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="start Orthanc; print its DICOMweb URL once it answers")
    start.add_argument("--dir", type=Path, required=True, help="folder for its config, storage, log and pid file")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port on 127.0.0.1 (default {DEFAULT_PORT})")
    start.add_argument("--user", help="require HTTP authentication with this user name")
    start.add_argument("--password-env", metavar="VAR", help="environment variable holding --user's password")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to answer (default 60)")
    stop = sub.add_parser("stop", help="stop the Orthanc started with the same --dir")
    stop.add_argument("--dir", type=Path, required=True, help="the folder given to start")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "stop":
            stopped = stop_orthanc(args.dir)
            print(f"stopped the Orthanc of {args.dir}" if stopped else f"no Orthanc of {args.dir} was running")
            return 0
        if bool(args.user) != bool(args.password_env):
            raise OrthancError("give --user and --password-env together (the password is read from that variable)")
        auth = None
        if args.user:
            password = os.environ.get(args.password_env, "")
            if not password:
                raise OrthancError(f"${args.password_env} is not set: export the password for {args.user} in it")
            auth = (args.user, password)
        server = start_orthanc(args.dir, args.port, auth, timeout=args.timeout)
    except OrthancError as exc:
        print(f"lungseg pacs: error: {exc}", file=sys.stderr)
        return 1
    print(f"Orthanc runs (pid {server.pid}, log {server.folder / LOG_NAME}); DICOMweb URL: {server.dicomweb_url}")
    print(f"stop it with: lungseg pacs stop --dir {args.dir}")
    return 0
