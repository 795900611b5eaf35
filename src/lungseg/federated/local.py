"""``lungseg fl-run``: a Flower run: the server here, one client per site as a local process or a SLURM job.

What the workflow's ``train`` job runs for ``train.mode: flower``: a throwaway CA and site tokens in
``OUT/tls``, ``lungseg fl-server`` with TLS (a child process of this one), and ``lungseg fl-client --site S``
for every site that holds training and validation cases. ``--launcher local`` (demo, CI): the server on a
free localhost port, the clients as local processes. ``--launcher slurm``: the server listens on all
interfaces of this node (under the SLURM profile a CPU job), its certificate names this node, and each
client is a SLURM GPU job (:mod:`lungseg.federated.slurm_clients`) given only file paths: its own site's
case files, ``OUT/server.address`` (``node:port``), ``OUT/tls/ca.pem`` and ``OUT/tls/<site>.token``. When
the server ends, or this process is stopped, client jobs still queued or running are cancelled (scancel).
Logs: ``OUT/logs/server.log`` and ``OUT/logs/<site>.log``. Outputs: the server's (``model.pt``,
``metrics.csv``, ``rounds.csv``, ...), copied to ``--model-out`` / ``--metrics-out``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lungseg.cluster.settings import ClusterConfigError
from lungseg.federated.security import write_credentials
from lungseg.federated.sites import read_site_table, site_cases, sites_of
from lungseg.training.preemption import REQUEUE_EXIT_CODE

__all__ = ["run_local"]


def _tail(path: Path, n: int = 15) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join(f"    {line}" for line in lines[-n:])


def server_hosts() -> list[str]:
    """The names clients may use to reach a server on this node (its certificate's names): the SLURM node
    name, the host name, the FQDN, and localhost."""
    names = [os.environ.get("SLURMD_NODENAME", ""), socket.gethostname(), socket.getfqdn(), "localhost", "127.0.0.1"]
    return list(dict.fromkeys(n for n in names if n))


def _client_args(site: str, config: str, train: list[str], val: list[str], sites_file: str, out: Path,
                 threads: int, wait: float) -> list[str]:
    """``lungseg fl-client`` arguments of one site: paths only (the token's *file*, never the token)."""
    tls = out / "tls"
    return ["--site", site, "--config", config, "--train", *train, "--val", *val, "--sites", sites_file,
            "--server-file", str(out / "server.address"), "--ca", str(tls / "ca.pem"), "--token", str(tls / f"{site}.token"),
            "--work-dir", str(out / "clients"), "--threads", str(threads), "--wait", f"{wait:g}"]


def run_local(config: str, train: list[str], val: list[str], sites_file: str, out_dir: str | Path, threads: int = 1,
              min_clients: int | None = None, round_timeout: float | None = None, model_out: str | None = None,
              metrics_out: str | None = None, timeout: float | None = None, evaluate_every: int = 1,
              proximal_mu: float = 0.0, launcher: str = "local", slurm_options=None,
              join_timeout: float | None = None) -> int:
    """Start the server and the site clients (``launcher`` local: processes; slurm: jobs with
    ``slurm_options``, a :class:`lungseg.cluster.sweep.ExecutorOptions`), wait; returns the server's exit status."""
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
    slurm = launcher == "slurm"
    if join_timeout is None:
        join_timeout = 1800.0 if slurm else 300.0  # SLURM: client jobs may wait in the queue
    tls = out / "tls"
    write_credentials(tls, sites, server_hosts() if slurm else ("localhost", "127.0.0.1"))
    address_file = out / "server.address"
    address_file.unlink(missing_ok=True)
    py = [sys.executable, "-m", "lungseg"]
    server_cmd = py + ["fl-server", "--config", config, "--out-dir", str(out / "server"), "--tokens", str(tls / "tokens.json"),
                       "--certs", str(tls), "--address", "0.0.0.0:0" if slurm else "127.0.0.1:0",
                       "--address-file", str(address_file), "--join-timeout", f"{join_timeout:g}"]
    server_cmd += ["--min-clients", str(min_clients)] if min_clients else []
    server_cmd += ["--round-timeout", str(round_timeout)] if round_timeout else []
    server_cmd += ["--evaluate-every", str(evaluate_every)] if evaluate_every > 1 else []
    server_cmd += ["--proximal-mu", str(proximal_mu)] if proximal_mu > 0 else []
    server_cmd += ["--model-out", model_out] if model_out else []
    server_cmd += ["--metrics-out", metrics_out] if metrics_out else []
    client_threads = slurm_options.cpus_per_proc if slurm else max(1, threads // len(sites))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads if slurm else client_threads))
    procs: dict[str, subprocess.Popen] = {}
    jobs: dict = {}
    logs = {name: open(out / "logs" / f"{name}.log", "w") for name in ["server", *([] if slurm else sites)]}  # noqa: SIM115
    say = lambda msg: print(f"lungseg fl-run: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        procs["server"] = subprocess.Popen(server_cmd, stdout=logs["server"], stderr=subprocess.STDOUT, env=env)
        # each client is given only its own site's case files
        client_args = {site: _client_args(site, config, site_cases(train, table, site), site_cases(val, table, site),
                                          sites_file, out, client_threads, join_timeout if slurm else 60.0)
                       for site in sites}
        if slurm:  # each job appends to logs/<site>.log
            from lungseg.federated.slurm_clients import submit_clients

            jobs = submit_clients(client_args, out, slurm_options, log=say)
            write_job_table(out / "client_jobs.tsv", jobs)
        else:
            for site, argv in client_args.items():
                procs[site] = subprocess.Popen(py + ["fl-client", *argv], stdout=logs[site], stderr=subprocess.STDOUT,
                                               env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        watch, stopped = (JobWatch(jobs) if slurm else None), False
        while procs["server"].poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"lungseg fl-run: no result after {timeout:.0f} s")
            if watch is not None and watch.all_ended_for(ALL_ENDED_GRACE_S):
                say(f"every client job has ended ({watch.states()}) and the server still waits: stopping it")
                procs["server"].terminate()
                procs["server"].wait(timeout=30)
                stopped = True
                break
            time.sleep(0.2)
        rc = 1 if stopped else procs["server"].returncode
        if slurm:
            _wait_for_jobs(jobs, 30.0)
        for site in sites:
            try:
                if site in procs:
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
        if jobs:
            from lungseg.federated.slurm_clients import cancel_jobs

            cancel_jobs(jobs, log=say)
    if rc != 0:
        server_log = out / "logs" / "server.log"
        print(f"lungseg fl-run: the server failed (exit {rc}); {server_log} ends:\n{_tail(server_log)}", file=sys.stderr)
        for site in sites:
            if (procs[site].returncode not in (0, None)) if site in procs else slurm:
                print(f"  {site}.log ends:\n{_tail(out / 'logs' / f'{site}.log')}", file=sys.stderr)
    return rc


#: seconds the server may go on after every client job ended (it normally ends first: it ends the run)
ALL_ENDED_GRACE_S = 60.0


class JobWatch:
    """Polls the client jobs' states every few seconds; notes when all of them have ended."""

    def __init__(self, jobs: dict, every: float = 5.0) -> None:
        self.jobs, self.every = jobs, every
        self.checked, self.ended_since = -math.inf, None
        self._states: dict[str, str] = {}

    def states(self) -> str:
        return ", ".join(f"{site} {state}" for site, state in self._states.items()) or "none submitted"

    def all_ended_for(self, seconds: float) -> bool:
        from lungseg.federated.slurm_clients import ENDED, job_state

        now = time.monotonic()
        if now - self.checked >= self.every:
            self.checked = now
            self._states = {site: job_state(job) for site, job in self.jobs.items()}
            ended = all(state in ENDED for state in self._states.values())
            self.ended_since = (self.ended_since or now) if ended else None
        return self.ended_since is not None and now - self.ended_since >= seconds


def _wait_for_jobs(jobs: dict, seconds: float) -> None:
    """Give the client jobs ``seconds`` to end by themselves after the server closed the run."""
    from lungseg.federated.slurm_clients import ENDED, job_state

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(job_state(j) not in ENDED for j in jobs.values()):
        time.sleep(1.0)


def write_job_table(path: Path, jobs: dict) -> None:
    """``site<TAB>job_id`` of the client jobs (for sacct / scancel by hand)."""
    path.write_text("site\tjob_id\n" + "".join(f"{site}\t{job.job_id}\n" for site, job in jobs.items()))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment's train settings file (mode: flower)")
    parser.add_argument("--train", nargs="+", required=True, help="training case files (.h5) of all sites")
    parser.add_argument("--val", nargs="+", required=True, help="validation case files (.h5) of all sites")
    parser.add_argument("--sites", required=True, help="case sheet (TSV) with case_id and site columns")
    parser.add_argument("--out-dir", required=True, help="run folder: tls/, logs/, server/ (resume state), clients/")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads shared by the site clients (--launcher slurm: "
                        "the server's; each client job gets --cpus-per-client)")
    parser.add_argument("--min-clients", type=int, help="sites needed per round (default: all)")
    parser.add_argument("--round-timeout", type=float, help="seconds a site may take per round")
    parser.add_argument("--evaluate-every", type=int, default=1, help="the sites validate the global model every N rounds")
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx proximal term (0: plain FedAvg)")
    parser.add_argument("--model-out", help="copy the final model.pt here")
    parser.add_argument("--metrics-out", help="copy metrics.csv here")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: the clients are processes here; slurm: one SLURM GPU job per site (submitit)")
    parser.add_argument("--join-timeout", type=float, help="seconds the server waits for the sites before round 1 "
                        "(default: 300; 1800 with --launcher slurm, where client jobs may queue)")
    from lungseg.federated.slurm_clients import configure_slurm

    configure_slurm(parser)


def _stop(signum: int, _frame) -> None:
    # the finally block of run_local stops the server and the clients (scancel of the client jobs); the
    # server's state after its last round is saved, so the job can be requeued (lungseg train-guard) and
    # resume there. Later signals are ignored: under SLURM one comes from slurmstepd and one from the guard,
    # and a second SystemExit would break off the clean-up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(REQUEUE_EXIT_CODE)


def run(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _stop)
    try:
        options = None
        if args.launcher == "slurm":
            from lungseg.federated.slurm_clients import client_executor_options

            options = client_executor_options(args)
        return run_local(args.config, args.train, args.val, args.sites, args.out_dir, args.threads, args.min_clients,
                         args.round_timeout, args.model_out, args.metrics_out, evaluate_every=args.evaluate_every,
                         proximal_mu=args.proximal_mu, launcher=args.launcher, slurm_options=options,
                         join_timeout=args.join_timeout)
    except (ValueError, TimeoutError, ClusterConfigError) as exc:
        print(f"lungseg fl-run: error: {exc}", file=sys.stderr)
        return 1
