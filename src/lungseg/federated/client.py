"""``lungseg fl-client``: one site's Flower client; it trains on its own cases with the training core.

Each round the client receives the global weights, trains ``local_epochs`` epochs on its site's training
cases with :func:`lungseg.training.train.train` (``initial_weights`` = the global model; a fresh optimiser
per round, as in FedAvg; the learning rate of the round's first epoch on the run's cosine, held for the
round; with the server's ``proximal_mu`` > 0 FedProx's proximal term is added to its loss) and returns
its weights with n_k (its training slices). For evaluation it returns Dice counts of
the global model on its validation cases. What it sends: tensors, n_k, its site ID and numbers; never a
path, case ID or header value. It joins by answering the server's challenge with its site token.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from lungseg.federated.arrays import arrays_of, state_dict_of
from lungseg.federated.evaluate import evaluate_model, training_items
from lungseg.federated.security import read_token, token_response
from lungseg.federated.sites import check_site_id, read_site_table, site_cases
from lungseg.training.checkpoint import load_checkpoint
from lungseg.training.config import TrainConfig, config_from_settings
from lungseg.training.models import build_model
from lungseg.training.optim import lr_at
from lungseg.training.train import seed_everything, train

log = logging.getLogger("lungseg.federated.client")
__all__ = ["SiteClient", "local_config", "initial_state", "run_client"]


def local_config(base: TrainConfig, server_round: int) -> TrainConfig:
    """The settings of one round's local training: ``local_epochs`` epochs as one plain (``ddp``-mode)
    run, seeded per round, at the run's learning rate for the round's first epoch (held constant)."""
    e = base.local_epochs
    start = (server_round - 1) * e
    lr = lr_at(start, base.epochs, base.lr, base.lr_min, base.warmup_epochs)
    return dataclasses.replace(
        base, mode="ddp", epochs=e, local_epochs=1, fed_fractions=(), seed=base.seed + server_round - 1, lr=lr, lr_min=lr,
        warmup_epochs=0, freeze_encoder_epochs=min(e, max(0, base.freeze_encoder_epochs - start)), pretrained=None)


def initial_state(config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weights a plain run with ``config`` starts from (seeded initialisation; pretrained encoder if set)."""
    seed_everything(config.seed)
    model = build_model(config.arch, **config.model_kwargs())
    if config.pretrained:
        from lungseg.training.pretrained import load_vgg16_pretrained

        load_vgg16_pretrained(model, config.pretrained)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def proximal_term(global_state: Mapping[str, torch.Tensor], mu: float) -> Callable[[torch.nn.Module], torch.Tensor]:
    """FedProx (Li et al. 2020): ``mu/2 ||w - w_global||^2`` over the trained parameters, added to the local loss."""
    anchors: dict[str, torch.Tensor] = {}

    def term(model: torch.nn.Module) -> torch.Tensor:
        total = None
        for name, p in model.named_parameters():
            if p.requires_grad:
                if name not in anchors:
                    anchors[name] = global_state[name].detach().to(p.device, p.dtype)
                d = ((p - anchors[name]) ** 2).sum()
                total = d if total is None else total + d
        return 0.5 * mu * total

    return term


def _device(config: TrainConfig) -> torch.device:
    use_cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    return torch.device("cuda" if use_cuda else "cpu")


def _client_base():
    import flwr as fl

    return fl.client.NumPyClient


class SiteClient(_client_base()):
    """One site's client: its training and validation case files stay here."""

    def __init__(self, site: str, token: str, config: TrainConfig, train_cases: Sequence[str], val_cases: Sequence[str],
                 work_dir: str | Path) -> None:
        self.site, self.token, self.config = check_site_id(site), token, config
        self.train_cases, self.val_cases = list(train_cases), list(val_cases)
        self.work_dir = Path(work_dir)
        self.template = {k: v for k, v in build_model(config.arch, **config.model_kwargs()).state_dict().items()}
        self.n_train = training_items(config, self.train_cases)
        self.rounds_done = 0

    def get_properties(self, config):
        challenge = str(config.get("challenge", ""))
        return {"site": self.site, "response": token_response(self.token, self.site, challenge) if challenge else ""}

    def get_parameters(self, config):
        return arrays_of(self.template)

    def fit(self, parameters, config):
        server_round = int(config["round"])
        log.info("site %s round %d: training %d local epoch(s) on %d items", self.site, server_round,
                 self.config.local_epochs, self.n_train)
        t0 = time.perf_counter()
        out = self.work_dir / "round"
        shutil.rmtree(out, ignore_errors=True)  # every round starts from the global model, not a stale checkpoint
        global_state = state_dict_of(self.template, parameters)
        mu = float(config.get("proximal_mu", 0.0))
        train(local_config(self.config, server_round), self.train_cases, self.val_cases, out,
              initial_weights=global_state, extra_loss=proximal_term(global_state, mu) if mu > 0 else None)
        state = load_checkpoint(out / "checkpoint.pt")
        last = state["history"][-1]
        self.rounds_done += 1
        metrics = {"site": self.site, "train_loss": float(last["train_loss"]), "local_val_dice": float(last["val_dice"]),
                   "train_seconds": time.perf_counter() - t0}
        return arrays_of(state["model"]), self.n_train, metrics

    def evaluate(self, parameters, config):
        model = build_model(self.config.arch, **self.config.model_kwargs())
        model.load_state_dict(state_dict_of(self.template, parameters))
        sums = evaluate_model(model, self.config, self.val_cases, _device(self.config))
        loss = sums["loss_sum"] / max(sums["n"], 1.0)
        return loss, int(sums["n"]), {"site": self.site, **{k: sums[k] for k in ("tp", "p", "g", "fscore_sum")}}


def run_client(client: SiteClient, address: str, ca_file: str | Path | None, retry_seconds: float = 60.0) -> int:
    """Connect to the server until it ends the run; returns 0 if this client took part in a round, else 1."""
    import flwr as fl

    root = Path(ca_file).read_bytes() if ca_file else None
    fl.client.start_client(server_address=address, client=client.to_client(), root_certificates=root,
                           insecure=root is None, max_wait_time=retry_seconds)
    if client.rounds_done == 0:
        log.error("site %s: the server closed the connection before any round: refused (wrong token, unknown "
                  "site, or the site is already connected) or the run had ended", client.site)
        return 1
    log.info("site %s: done after %d round(s)", client.site, client.rounds_done)
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="this site's pseudonymous ID (e.g. site_a)")
    parser.add_argument("--config", required=True, help="the experiment's train settings file (train_settings.json)")
    parser.add_argument("--train", nargs="+", required=True, help="training case files (.h5); only this site's are used")
    parser.add_argument("--val", nargs="+", required=True, help="validation case files (.h5); only this site's are used")
    parser.add_argument("--sites", required=True, help="case sheet (TSV) with case_id and site columns")
    parser.add_argument("--server", help="server address HOST:PORT")
    parser.add_argument("--server-file", help="file holding the server address (written by lungseg fl-server --address-file)")
    parser.add_argument("--ca", help="CA certificate (ca.pem) to verify the server; without it the connection is plain-text")
    parser.add_argument("--token", required=True, help="this site's token file (<site>.token from lungseg fl-certificates)")
    parser.add_argument("--work-dir", required=True, help="local folder for the round's training outputs (stays at the site)")
    parser.add_argument("--threads", type=int, help="CPU threads for training (overrides the settings file)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the server (address file, connection)")


def _address(args: argparse.Namespace) -> str:
    if args.server:
        return args.server
    if not args.server_file:
        raise ValueError("give --server HOST:PORT or --server-file FILE")
    path, deadline = Path(args.server_file), time.monotonic() + args.wait
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.1)
    raise ValueError(f"{path}: no server address after {args.wait:.0f} s; is lungseg fl-server running?")


def run(args: argparse.Namespace) -> int:
    logging.getLogger("flwr").propagate = False  # flwr prints its own lines
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        site = check_site_id(args.site)
        config = config_from_settings(args.config, {"threads": args.threads} if args.threads else None)
        return _run(args, site, config)
    except ValueError as exc:
        print(f"lungseg fl-client: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, site: str, config: TrainConfig) -> int:
    if getattr(config, "task", "segmentation") != "segmentation":
        raise ValueError(f"train.mode flower trains segmentation models; this settings file has task {config.task!r}")
    table = read_site_table(args.sites)
    train_cases, val_cases = site_cases(args.train, table, site), site_cases(args.val, table, site)
    if not train_cases or not val_cases:
        raise ValueError(f"site {site} has {len(train_cases)} training and {len(val_cases)} validation case(s); "
                         f"each site needs both (check the site column and the split)")
    client = SiteClient(site, read_token(args.token), config, train_cases, val_cases, Path(args.work_dir) / site)
    return run_client(client, _address(args), args.ca, retry_seconds=args.wait)
