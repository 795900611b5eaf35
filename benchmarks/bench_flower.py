"""Flower federated rounds: wall time per round, bytes per client (measured), server overhead vs local training.

Runs ``lungseg fl-run`` for real (TLS, site tokens; the server and one client process per site on this
machine) on synthetic per-case HDF5 files of ``--sites`` sites with 3 : 2 : 1 ... cases, and reads the
server's ``rounds.csv``. Per round:

* ``round_seconds``: wall time of the round at the server (fit + aggregation + evaluation + saving);
* ``local_train_seconds``: the slowest site's ``fit`` (its local training with the training core, as
  the client measures it);
* ``evaluate_seconds``: the evaluation phase (every site validates the new global model);
* ``server_seconds`` = the rest: sending and receiving parameters, (de)serialisation, FedAvg, saving the
  global model and the tables; ``server_overhead_fraction`` = server_seconds / round_seconds;
* ``bytes_sent`` / ``bytes_received`` per site: the serialized parameters (``Parameters.tensors``)
  sent to it (fit + evaluate) and received from it (fit), against the model's float32 size.

Round 1 includes each client's first-use costs (dataset indexing, allocator warm-up); the summary takes
the median of the later rounds. On a machine with fewer cores than sites, the sites' training shares the
cores: times are then an upper bound of what separate machines would see.

Run: ``.venv/bin/python benchmarks/bench_flower.py [--sites 3 --rounds 4 --base-channels 16]``; record with
``python -m lungseg.docs_reference record --out benchmarks/results/flower.json -- python benchmarks/bench_flower.py ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lungseg.casefile import CaseVolume, write_case
from lungseg.geometry import Geometry
from lungseg.training.models import build_model
from lungseg.training.train import TrainConfig

SITE_WEIGHTS = (3, 2, 1, 1, 1, 1, 1, 1)


def make_case(path: Path, seed: int, slices: int, size: int) -> str:
    """A bright disc per slice (random centre and radius) on a noisy dark background, labelled lung."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(-800.0, 30.0, (slices, size, size))
    mask = np.zeros((slices, size, size), np.uint8)
    for z in range(slices):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(size * 0.1, size * 0.25) ** 2
        image[z][disc] += 850.0
        mask[z][disc] = 1
    geometry = Geometry((0.8, 0.8, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_case(path, CaseVolume(path.stem, image.astype(np.int16), geometry, labels={"lung": mask}))
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--slices", type=int, default=12, help="slices per case")
    parser.add_argument("--size", type=int, default=128, help="slice size in pixels")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads shared by the site clients")
    parser.add_argument("--out", default="benchmarks/results/flower.json")
    args = parser.parse_args(argv)

    sites = [f"site_{chr(ord('a') + i)}" for i in range(args.sites)]
    config = TrainConfig(base_channels=args.base_channels, depth=args.depth, image_size=args.image_size,
                         epochs=args.rounds * args.local_epochs, local_epochs=args.local_epochs, batch_size=8, lr=1e-3,
                         seed=0, roi="none", mode="flower", augment=False)
    with tempfile.TemporaryDirectory(prefix="bench_flower_") as tmp:
        root = Path(tmp)
        rows, train, val, seed = [], [], [], 0
        for site, weight in zip(sites, SITE_WEIGHTS):
            for i in range(weight + 1):  # weight training cases + 1 validation case per site
                seed += 1
                name = f"{site}_{i}"
                path = make_case(root / f"{name}.h5", seed, args.slices, args.size)
                (val if i == weight else train).append(path)
                rows.append(f"{name}\t{name}\tnone\t{site}\n")
        (root / "cases.tsv").write_text("case_id\tpatient_id\tdicom\tsite\n" + "".join(rows))
        settings = {k: v for k, v in config.as_dict().items() if k not in ("device", "log_every")}
        (root / "settings.json").write_text(json.dumps(settings))
        t0 = time.perf_counter()
        from lungseg.federated.local import run_local

        rc = run_local(str(root / "settings.json"), train, val, str(root / "cases.tsv"), root / "run", args.threads,
                       timeout=3600)
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"fl-run failed (exit {rc})", file=sys.stderr)
            return 1
        with open(root / "run" / "server" / "rounds.csv", newline="") as f:
            table = list(csv.DictReader(f))

    model = build_model(config.arch, **config.model_kwargs())
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    per_round = []
    for r in table:
        per_round.append({
            "round": int(r["round"]),
            "round_seconds": round(float(r["round_seconds"]), 3),
            "local_train_seconds": round(float(r["local_train_seconds"]), 3),
            "evaluate_seconds": round(float(r["evaluate_seconds"]), 3),
            "server_seconds": round(float(r["server_seconds"]), 3),
            "server_overhead_fraction": round(float(r["server_seconds"]) / float(r["round_seconds"]), 4),
            "pooled_val_dice": round(float(r["val_dice"]), 4),
            "bytes_sent": {s: int(r[f"bytes_sent_{s}"]) for s in sites},
            "bytes_received": {s: int(r[f"bytes_received_{s}"]) for s in sites},
            "n_train": {s: int(r[f"n_train_{s}"]) for s in sites},
        })
    later = per_round[1:] or per_round
    med = {k: round(statistics.median(p[k] for p in later), 4) for k in
           ("round_seconds", "local_train_seconds", "evaluate_seconds", "server_seconds", "server_overhead_fraction")}
    sent = per_round[0]["bytes_sent"][sites[0]]
    received = per_round[0]["bytes_received"][sites[0]]
    result = {
        "benchmark": "Flower federated rounds (lungseg fl-run: TLS, one client process per site)",
        "device": f"cpu ({os.cpu_count()} cores)",
        "threads": args.threads,
        "torch": torch.__version__,
        "flwr": __import__("flwr").__version__,
        "python": platform.python_version(),
        "config": {"sites": args.sites, "rounds": args.rounds, "local_epochs": args.local_epochs, "arch": config.arch,
                   "base_channels": args.base_channels, "depth": args.depth, "image_size": args.image_size,
                   "slices_per_case": args.slices, "slice_size": args.size},
        "model_float32_bytes": int(model_bytes),
        "bytes_per_round_per_site": {"sent": sent, "received": received, "sent_over_model": round(sent / model_bytes, 4),
                                     "received_over_model": round(received / model_bytes, 4)},
        "median_after_round_1": med,
        "rounds": per_round,
        "fl_run_wall_seconds": round(wall, 2),
        "command": "python benchmarks/bench_flower.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"round {med['round_seconds']} s (local training {med['local_train_seconds']} s, evaluation "
          f"{med['evaluate_seconds']} s, server {med['server_seconds']} s = {100 * med['server_overhead_fraction']:.1f} %); "
          f"per site per round {sent} B sent, {received} B received (model {model_bytes} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
