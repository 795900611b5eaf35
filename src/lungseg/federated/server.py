"""``lungseg fl-server``: the Flower server. It holds the global model, never a case file.

Each round: every connected (authenticated) site trains from the global model (with ``--proximal-mu``
> 0 under FedProx's proximal term) and sends its weights
and n_k; the new global model is ``sum_k n_k/n w_k`` (:func:`lungseg.federated.arrays.fedavg`, eq. 1
of seed 000); then every site evaluates it on its validation cases and sends Dice counts only.

Outputs in ``--out-dir`` (atomic, after every round): ``global_model.pt`` (the latest round's model, in
the model file format), ``model.pt`` (the best round by pooled validation Dice), ``metrics.csv`` (one
row per round, the columns of ``lungseg train``), ``rounds.csv`` (per round: sites that took part or
failed, loss, Dice per site and pooled, bytes sent to / received from each site measured on the serialized
parameters, the slowest site's local training time, the evaluation phase, the rest (server: transfer,
aggregation, saving) and the round's wall time) and ``server_state.pt`` (resume: a restarted server
continues after its last saved round). A client that fails or disconnects mid-round is recorded in
``rounds.csv`` and the run goes on while at least ``--min-clients`` sites remain.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungseg.atomic import atomic_path, write_text_atomic
from lungseg.federated.arrays import arrays_of, fedavg, parameters_bytes, state_dict_of
from lungseg.federated.client import initial_state, local_config
from lungseg.federated.security import check_response, load_tokens, new_challenge
from lungseg.training.checkpoint import load_checkpoint, model_file_state, save_checkpoint
from lungseg.training.config import TrainConfig, config_from_settings
from lungseg.training.models import build_model
from lungseg.training.rule_args import EXECUTION_ONLY
from lungseg.training.train import METRICS_NAME, MODEL_NAME, write_metrics_csv

log = logging.getLogger("lungseg.federated.server")
__all__ = ["FederatedRun", "rounds_fields", "run_server"]

STATE_NAME, GLOBAL_NAME, ROUNDS_NAME = "server_state.pt", "global_model.pt", "rounds.csv"
STATE_FORMAT = "lungseg-flower-server-1"
PER_SITE = ("val_dice", "n_train", "bytes_sent", "bytes_received", "train_seconds")


def rounds_fields(sites: Sequence[str]) -> list[str]:
    """Columns of ``rounds.csv`` for ``sites``."""
    return (["round", "epoch", "sites_ok", "sites_failed", "failures", "train_loss", "val_loss", "val_dice", "val_fscore"]
            + [f"{k}_{s}" for s in sites for k in PER_SITE]
            + ["local_train_seconds", "evaluate_seconds", "server_seconds", "round_seconds"])


def _settings_key(config: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in config.as_dict().items() if k not in EXECUTION_ONLY}


def _flwr():
    import flwr as fl

    return fl


class SiteClientManager(_flwr().server.SimpleClientManager):
    """Admits a client only after it proves its site's token (challenge-response); one client per site."""

    def __init__(self, tokens: Mapping[str, str], auth_timeout: float = 30.0) -> None:
        super().__init__()
        self.tokens, self.auth_timeout = dict(tokens), auth_timeout
        self.site_of: dict[str, str] = {}  # cid -> site, connected admitted clients
        self.admitted: dict[str, str] = {}  # cid -> site, every client admitted in this run
        self.refused = 0
        self._lock = threading.Lock()

    def register(self, client) -> bool:
        threading.Thread(target=self._admit, args=(client,), daemon=True).start()
        return True  # the stream must run for the challenge; sampling sees the client only once admitted

    def _admit(self, client) -> None:
        fl = _flwr()
        challenge, site, reason = new_challenge(), "", ""
        try:
            res = client.get_properties(fl.common.GetPropertiesIns(config={"challenge": challenge}),
                                        timeout=self.auth_timeout, group_id=None)
            site, response = str(res.properties.get("site", ""))[:40], str(res.properties.get("response", ""))
            with self._lock:
                if not check_response(self.tokens, site, challenge, response):
                    reason = "unknown site or wrong token"
                elif site in self.site_of.values():
                    reason = "that site is already connected"
                else:
                    self.site_of[client.cid] = self.admitted[client.cid] = site
        except Exception as exc:  # no answer, or a client that does not speak the protocol
            reason = f"no valid answer to the challenge ({type(exc).__name__})"
        if not reason:
            super().register(client)
            log.info("site %s joined (%d of %d sites connected)", site, len(self.site_of), len(self.tokens))
            return
        self.refused += 1
        log.warning("refused a client claiming site %r: %s", site, reason)
        with contextlib.suppress(Exception):  # it may be gone already
            client.reconnect(fl.common.ReconnectIns(seconds=None), timeout=5.0, group_id=None)

    def unregister(self, client) -> None:
        with self._lock:
            site = self.site_of.pop(client.cid, None)
        if site is not None:
            log.warning("site %s disconnected", site)
        super().unregister(client)

    def wait_for_sites(self, n: int, timeout: float) -> int:
        """Wait up to ``timeout`` s until ``n`` sites are admitted; returns how many are."""
        with self._cv:
            self._cv.wait_for(lambda: len(self.clients) >= n, timeout=timeout)
        return len(self.clients)


class FederatedRun(_flwr().server.strategy.FedAvg):
    """FedAvg over the admitted sites, recording each round and saving the global model after it."""

    def __init__(self, config: TrainConfig, out_dir: Path, sites: Sequence[str], rounds: int, min_clients: int,
                 join_timeout: float, evaluate_every: int = 1, proximal_mu: float = 0.0) -> None:
        super().__init__(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=min_clients,
                         min_evaluate_clients=min_clients, min_available_clients=min_clients, accept_failures=True)
        self.config, self.out_dir, self.sites = config, out_dir, list(sites)
        self.rounds, self.min_clients, self.join_timeout = rounds, min_clients, join_timeout
        self.evaluate_every, self.proximal_mu = max(1, evaluate_every), float(proximal_mu)
        self.template = initial_state(config)
        self.done, self.arrays = 0, arrays_of(self.template)
        self.history: list[dict[str, Any]] = []
        self.best_dice = -math.inf
        self._row: dict[str, Any] = {}
        self._waited = False
        self.manager: SiteClientManager | None = None
        self._load_state()

    # ---- state

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_NAME

    def _load_state(self) -> None:
        if not self.state_path.is_file():
            return
        state = load_checkpoint(self.state_path)
        if state.get("format") != STATE_FORMAT or state.get("settings") != _settings_key(self.config) \
                or state.get("sites") != self.sites:
            raise ValueError(f"{self.state_path} was written for other settings or sites; use another --out-dir "
                             f"or delete it to start over")
        self.done, self.history = int(state["round"]), list(state["history"])
        self.arrays = arrays_of(state["model"])
        self.best_dice = float(state["best_val_dice"])
        log.info("resuming after round %d of %d (best pooled val Dice %.4f)", self.done, self.rounds, self.best_dice)

    def _model_file(self, arrays: Sequence[np.ndarray], server_round: int, val_dice: float) -> dict[str, Any]:
        c = self.config
        model = build_model(c.arch, **c.model_kwargs())
        model.load_state_dict(state_dict_of(self.template, arrays))
        return model_file_state(
            model, arch=c.arch, model_kwargs=c.model_kwargs(), label=c.label, image_size=c.image_size,
            hu_window=c.hu_window, epoch=server_round * c.local_epochs, val_dice=val_dice,
            roi={"mode": c.roi, "label": c.roi_label if c.roi != "none" else "",
                 "margin": c.roi_margin if c.roi == "crop" or c.patches else 0},
            input_spec=c.input_spec(), gpus=0)

    def _save_round(self, server_round: int) -> None:
        row = self.history[-1]
        model_state = self._model_file(self.arrays, server_round, row["val_dice"])
        save_checkpoint(self.out_dir / GLOBAL_NAME, model_state)
        if row["val_dice"] > self.best_dice or not (self.out_dir / MODEL_NAME).is_file():
            save_checkpoint(self.out_dir / MODEL_NAME, model_state)
        self.best_dice = max(self.best_dice, row["val_dice"])
        self.write_tables()
        save_checkpoint(self.state_path, {
            "format": STATE_FORMAT, "round": server_round, "model": state_dict_of(self.template, self.arrays),
            "history": self.history, "best_val_dice": self.best_dice, "settings": _settings_key(self.config),
            "sites": self.sites})

    def write_tables(self) -> None:
        """``rounds.csv`` and ``metrics.csv`` from the recorded rounds."""
        fields = rounds_fields(self.sites)
        with atomic_path(self.out_dir / ROUNDS_NAME) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows([{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in self.history])
        write_metrics_csv(self.out_dir / METRICS_NAME, [
            {"epoch": r["epoch"], "train_loss": r["train_loss"], "val_loss": r["val_loss"], "val_dice": r["val_dice"],
             "val_fscore": r["val_fscore"], "lr": r["lr"], "images_per_s": r["images_per_s"],
             "epoch_seconds": r["round_seconds"]} for r in self.history])

    # ---- Flower strategy

    def initialize_parameters(self, client_manager):
        return _flwr().common.ndarrays_to_parameters(self.arrays)

    def _sites_ok(self, client_manager) -> list:
        if not self._waited:  # this server's first round: wait for every site
            n = client_manager.wait_for_sites(len(self.sites), self.join_timeout)
            self._waited = True
        else:
            n = client_manager.num_available()
        if n < self.min_clients:
            raise RuntimeError(f"only {n} site(s) connected, fewer than --min-clients {self.min_clients}, after waiting "
                               f"{self.join_timeout:.0f} s; the run stops after round {self.done}")
        return list(client_manager.all().values())

    def configure_fit(self, server_round, parameters, client_manager):
        fl = _flwr()
        global_round = self.done + 1
        clients = self._sites_ok(client_manager)
        self._row = {"round": global_round, "epoch": global_round * self.config.local_epochs, "t0": time.perf_counter(),
                     "lr": local_config(self.config, global_round).lr}
        size = parameters_bytes(parameters.tensors)
        for c in clients:
            self._row[f"bytes_sent_{client_manager.admitted[c.cid]}"] = size
        ins = fl.common.FitIns(parameters, {"round": global_round, "rounds": self.rounds, "proximal_mu": self.proximal_mu})
        return [(c, ins) for c in clients]

    def aggregate_fit(self, server_round, results, failures):
        fl = _flwr()
        row, site_of = self._row, self._site_lookup(results)
        ok = []
        for proxy, res in results:
            site = site_of[proxy.cid]
            if res.metrics.get("site") != site:
                failures.append(RuntimeError(f"a client admitted as {site} reported {res.metrics.get('site')!r}"))
                continue
            ok.append((site, res))
            row[f"bytes_received_{site}"] = parameters_bytes(res.parameters.tensors)
            row[f"n_train_{site}"] = res.num_examples
            row[f"train_seconds_{site}"] = float(res.metrics["train_seconds"])
        failed_sites = sorted({s for s in self.sites if f"bytes_sent_{s}" in row} - {s for s, _ in ok})
        row["sites_ok"] = ";".join(sorted(s for s, _ in ok)) or "-"
        row["sites_failed"] = ";".join(failed_sites) or "-"
        row["failures"] = len(failures)
        for site in failed_sites:
            log.warning("round %d: site %s failed or disconnected; averaging the other %d site(s)", row["round"], site, len(ok))
        if len(ok) < self.min_clients:
            raise RuntimeError(f"round {row['round']}: {len(ok)} site(s) returned weights, fewer than --min-clients "
                               f"{self.min_clients}; the run stops after round {self.done}")
        n_total = sum(res.num_examples for _, res in ok)
        self.arrays = fedavg([(fl.common.parameters_to_ndarrays(res.parameters), res.num_examples) for _, res in ok])
        row["train_loss"] = sum(float(res.metrics["train_loss"]) * res.num_examples for _, res in ok) / n_total
        row["local_train_seconds"] = max(float(res.metrics["train_seconds"]) for _, res in ok)
        row["images_per_s"] = n_total * self.config.local_epochs / max(row["local_train_seconds"], 1e-9)
        row["t_fit"] = time.perf_counter()
        return fl.common.ndarrays_to_parameters(self.arrays), {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        fl = _flwr()
        global_round = self.done + 1
        if global_round % self.evaluate_every and global_round < self.rounds:  # not an evaluation round
            self._finish_round([], [])
            return []
        clients = list(client_manager.all().values())
        size = parameters_bytes(parameters.tensors)
        for c in clients:
            key = f"bytes_sent_{client_manager.admitted[c.cid]}"
            self._row[key] = self._row.get(key, 0) + size
        if not clients:  # every site left after training: record the round without validation (NaN)
            self._finish_round([], [])
            return []
        ins = fl.common.EvaluateIns(parameters, {"round": self.done + 1})
        return [(c, ins) for c in clients]

    def aggregate_evaluate(self, server_round, results, failures):
        return self._finish_round(results, failures)

    def _finish_round(self, results, failures):
        row = self._row
        sums = np.zeros(6)
        for _, res in results:
            m = res.metrics
            site = str(m["site"])
            tp, p, g = float(m["tp"]), float(m["p"]), float(m["g"])
            row[f"val_dice_{site}"] = 1.0 if p + g == 0 else 2 * tp / (p + g)
            sums += [res.loss * res.num_examples, res.num_examples, tp, p, g, float(m["fscore_sum"])]
        if failures:
            row["failures"] += len(failures)
        n = max(sums[1], 1.0)
        row["val_loss"] = sums[0] / n if sums[1] else math.nan
        row["val_dice"] = (1.0 if sums[3] + sums[4] == 0 else 2 * sums[2] / (sums[3] + sums[4])) if sums[1] else math.nan
        row["val_fscore"] = sums[5] / n if sums[1] else math.nan
        now = time.perf_counter()
        row["round_seconds"] = now - row.pop("t0")
        row["evaluate_seconds"] = now - row.pop("t_fit")
        row["server_seconds"] = row["round_seconds"] - row["local_train_seconds"] - row["evaluate_seconds"]
        self.history.append({k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in row.items()})
        self.done = row["round"]
        self._save_round(self.done)
        log.info("round %d/%d: sites %s (failed: %s), train_loss %.4f, pooled val Dice %.4f, %.1f s", self.done,
                 self.rounds, row["sites_ok"], row["sites_failed"], row["train_loss"], row["val_dice"], row["round_seconds"])
        return row["val_loss"], {"val_dice": row["val_dice"]}

    def evaluate(self, server_round, parameters):
        return None  # the server holds no data: evaluation happens at the sites

    def _site_lookup(self, results) -> dict[str, str]:
        return {proxy.cid: self.manager.admitted.get(proxy.cid, "?") for proxy, _ in results}


def free_address(host: str) -> str:
    """``host:PORT`` with a port free now (picked by binding port 0)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return f"{host}:{s.getsockname()[1]}"


def run_server(config: TrainConfig, out_dir: str | Path, tokens: Mapping[str, str], address: str,
               certificates: tuple[bytes, bytes, bytes] | None, min_clients: int | None = None,
               round_timeout: float | None = None, join_timeout: float = 600.0, address_file: str | Path | None = None,
               auth_timeout: float = 30.0, evaluate_every: int = 1, proximal_mu: float = 0.0) -> Path:
    """Run the rounds still to do (``config.epochs / config.local_epochs`` in all); returns ``out_dir/model.pt``."""
    from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

    fl = _flwr()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.epochs % config.local_epochs:
        raise ValueError(f"epochs ({config.epochs}) must be a multiple of local_epochs ({config.local_epochs}): "
                         f"rounds = epochs / local_epochs")
    rounds, sites = config.epochs // config.local_epochs, sorted(tokens)
    min_clients = min_clients or len(sites)
    if not 1 <= min_clients <= len(sites):
        raise ValueError(f"--min-clients {min_clients}: must be between 1 and the {len(sites)} site(s) of the token file")
    strategy = FederatedRun(config, out, sites, rounds, min_clients, join_timeout, evaluate_every, proximal_mu)
    if strategy.done >= rounds:
        log.info("%s: all %d round(s) done", out / STATE_NAME, rounds)
        strategy.write_tables()
        return out / MODEL_NAME
    manager = SiteClientManager(tokens, auth_timeout)
    strategy.manager = manager
    if address.rsplit(":", 1)[-1] == "0":
        address = free_address(address.rsplit(":", 1)[0])
    grpc_server = start_grpc_server(client_manager=manager, server_address=address,
                                    max_message_length=fl.common.GRPC_MAX_MESSAGE_LENGTH, certificates=certificates)
    if address_file:  # what clients dial: this node's name (in a SLURM job its node name) when listening on all interfaces
        host, port = address.rsplit(":", 1)
        if host in ("0.0.0.0", "[::]"):
            host = os.environ.get("SLURMD_NODENAME") or socket.getfqdn()
        write_text_atomic(address_file, f"{host}:{port}\n")
    log.info("Flower server on %s (TLS %s), rounds %d..%d, sites %s, at least %d per round", address,
             "on" if certificates else "OFF", strategy.done + 1, rounds, ", ".join(sites), min_clients)
    server = fl.server.Server(client_manager=manager, strategy=strategy)
    try:
        server.fit(num_rounds=rounds - strategy.done, timeout=round_timeout)
        server.disconnect_all_clients(timeout=round_timeout)
    finally:
        grpc_server.stop(grace=1)
    if strategy.done < rounds:
        raise RuntimeError(f"the run stopped after round {strategy.done} of {rounds}")
    return out / MODEL_NAME


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the experiment's train settings file (train_settings.json); "
                        "rounds = epochs / local_epochs")
    parser.add_argument("--out-dir", required=True, help="global model, per-round tables and the resume state")
    parser.add_argument("--tokens", required=True, help="site -> token file (tokens.json from lungseg fl-certificates)")
    parser.add_argument("--certs", help="folder with ca.pem, server.pem, server.key (lungseg fl-certificates); "
                        "without it the server runs without TLS (tests on one machine only)")
    parser.add_argument("--address", default="0.0.0.0:8080", help="HOST:PORT to listen on (port 0: a free port)")
    parser.add_argument("--address-file", help="write the address clients should use here once listening")
    parser.add_argument("--min-clients", type=int, help="sites needed per round (default: all sites of --tokens)")
    parser.add_argument("--round-timeout", type=float, help="seconds a site may take per round before it counts as failed")
    parser.add_argument("--join-timeout", type=float, default=600.0, help="seconds to wait for the sites to connect")
    parser.add_argument("--evaluate-every", type=int, default=1, help="the sites validate the global model every N rounds "
                        "and after the last (other rounds: NaN in the tables; model.pt is chosen among evaluated rounds)")
    parser.add_argument("--proximal-mu", type=float, default=0.0, help="FedProx: the sites add mu/2 ||w - w_global||^2 to "
                        "their loss (0: plain FedAvg)")
    parser.add_argument("--model-out", help="also copy the final model.pt here")
    parser.add_argument("--metrics-out", help="also copy metrics.csv here")


def certificates_of(folder: str | Path) -> tuple[bytes, bytes, bytes]:
    """``(ca.pem, server.pem, server.key)`` bytes from a folder written by ``lungseg fl-certificates``."""
    folder = Path(folder)
    return tuple((folder / name).read_bytes() for name in ("ca.pem", "server.pem", "server.key"))  # type: ignore[return-value]


def _copy(src: Path, dst: str | None) -> None:
    if dst:
        with atomic_path(dst) as tmp:
            tmp.write_bytes(src.read_bytes())


def run(args: argparse.Namespace) -> int:
    logging.getLogger("flwr").propagate = False  # flwr prints its own lines
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = config_from_settings(args.config)
        model = run_server(config, args.out_dir, load_tokens(args.tokens), args.address,
                           certificates_of(args.certs) if args.certs else None, args.min_clients, args.round_timeout,
                           args.join_timeout, args.address_file, evaluate_every=args.evaluate_every,
                           proximal_mu=args.proximal_mu)
    except (ValueError, RuntimeError) as exc:
        print(f"lungseg fl-server: error: {exc}", file=sys.stderr)
        return 1
    _copy(model, args.model_out)
    _copy(model.parent / METRICS_NAME, args.metrics_out)
    return 0


