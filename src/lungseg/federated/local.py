"""``lungseg fl-run``: a Flower run on one machine: the server and one client per site as local processes.

What the workflow's ``train`` job runs for ``train.mode: flower`` (demo, CI): a throwaway CA and site
tokens in ``OUT/tls``, ``lungseg fl-server`` on a free localhost port with TLS, and ``lungseg fl-client
--site S`` for every site that holds training cases, each with only the case list of its own site.
Logs: ``OUT/logs/server.log`` and ``OUT/logs/<site>.log``. Outputs: the server's (``model.pt``,
``metrics.csv``, ``rounds.csv``, ...), copied to ``--model-out`` / ``--metrics-out``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lungseg.federated.security import write_credentials
from lungseg.federated.sites import read_site_table, site_cases, sites_of
from lungseg.training.preemption import REQUEUE_EXIT_CODE

__all__ = ["run_local"]


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(f"    {line}" for line in lines[-n:])


def run_local(config: str, train: list[str], val: list[str], sites_file: str, out_dir: str | Path, threads: int = 1,
              min_clients: int | None = None, round_timeout: float | None = None, model_out: str | None = None,
              metrics_out: str | None = None, timeout: float | None = None, evaluate_every: int = 1,
              proximal_mu: float = 0.0) -> int:
    """Start the server and the site clients, wait for them; returns the server's exit status."""
    out = Path(out_dir)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    table = read_site_table(sites_file)
    sites = [s for s in sites_of(train, table) if site_cases(val, table, s)]
    left_out = sorted(set(sites_of(train, table)) - set(sites))
    if left_out:
        print(f"lungseg fl-run: warning: site(s) {', '.join(left_out)} have training but no validation cases in this "
              f"split and take no part (a client validates on its own cases)", file=sys.stderr)
    if not sites:
        raise ValueError(f"no site in {sites_file} has both training and validation cases")
    tls = out / "tls"
    write_credentials(tls, sites)
    address_file = out / "server.address"
    address_file.unlink(missing_ok=True)
    py = [sys.executable, "-m", "lungseg"]
    server_cmd = py + ["fl-server", "--config", config, "--out-dir", str(out / "server"), "--tokens", str(tls / "tokens.json"),
                       "--certs", str(tls), "--address", "127.0.0.1:0", "--address-file", str(address_file),
                       "--join-timeout", "300"]
    server_cmd += ["--min-clients", str(min_clients)] if min_clients else []
    server_cmd += ["--round-timeout", str(round_timeout)] if round_timeout else []
    server_cmd += ["--evaluate-every", str(evaluate_every)] if evaluate_every > 1 else []
    server_cmd += ["--proximal-mu", str(proximal_mu)] if proximal_mu > 0 else []
    server_cmd += ["--model-out", model_out] if model_out else []
    server_cmd += ["--metrics-out", metrics_out] if metrics_out else []
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // len(sites))))
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: open(out / "logs" / f"{name}.log", "w") for name in ["server", *sites]}  # noqa: SIM115 - closed below
    try:
        procs["server"] = subprocess.Popen(server_cmd, stdout=logs["server"], stderr=subprocess.STDOUT, env=env)
        for site in sites:
            cmd = py + ["fl-client", "--site", site, "--config", config, "--train", *train, "--val", *val,
                        "--sites", sites_file, "--server-file", str(address_file), "--ca", str(tls / "ca.pem"),
                        "--token", str(tls / f"{site}.token"), "--work-dir", str(out / "clients"),
                        "--threads", str(max(1, threads // len(sites)))]
            procs[site] = subprocess.Popen(cmd, stdout=logs[site], stderr=subprocess.STDOUT, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        while procs["server"].poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lungseg fl-run: no result after {timeout:.0f} s")
            time.sleep(0.2)
        rc = procs["server"].returncode
        for site in sites:
            try:
                procs[site].wait(timeout=30)
            except subprocess.TimeoutExpired:
                procs[site].kill()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.values():
            f.close()
    if rc != 0:
        server_log = out / "logs" / "server.log"
        print(f"lungseg fl-run: the server failed (exit {rc}); {server_log} ends:\n{_tail(server_log)}", file=sys.stderr)
        for site in sites:
            if procs[site].returncode not in (0, None):
                print(f"  {site}.log ends:\n{_tail(out / 'logs' / f'{site}.log')}", file=sys.stderr)
    return rc


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment's train settings file (mode: flower)")
    parser.add_argument("--train", nargs="+", required=True, help="training case files (.h5) of all sites")
    parser.add_argument("--val", nargs="+", required=True, help="validation case files (.h5) of all sites")
    parser.add_argument("--sites", required=True, help="case sheet (TSV) with case_id and site columns")
    parser.add_argument("--out-dir", required=True, help="run folder: tls/, logs/, server/ (resume state), clients/")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads shared by the site clients")
    parser.add_argument("--min-clients", type=int, help="sites needed per round (default: all)")
    parser.add_argument("--round-timeout", type=float, help="seconds a site may take per round")
    parser.add_argument("--evaluate-every", type=int, default=1, help="the sites validate the global model every N rounds")
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx proximal term (0: plain FedAvg)")
    parser.add_argument("--model-out", help="copy the final model.pt here")
    parser.add_argument("--metrics-out", help="copy metrics.csv here")


def _stop(signum: int, _frame) -> None:
    # the finally block of run_local stops the server and the clients; the server's state after its last
    # round is saved, so the job can be requeued (lungseg train-guard) and resume there
    raise SystemExit(REQUEUE_EXIT_CODE)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        return run_local(args.config, args.train, args.val, args.sites, args.out_dir, args.threads, args.min_clients,
                         args.round_timeout, args.model_out, args.metrics_out, evaluate_every=args.evaluate_every,
                         proximal_mu=args.proximal_mu)
    except (ValueError, TimeoutError) as exc:
        print(f"lungseg fl-run: error: {exc}", file=sys.stderr)
        return 1
