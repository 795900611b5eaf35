"""``lungseg classify``: the malignancy probability of every nodule of one or more cases, from one model or the
mean of several (the fold models of an experiment).

Input: each case's nodule patch file and the nodule table beside it (``lungseg nodule-patches``; ``--table``
names another table for a single case); output: one TSV with one row per nodule, case after case (row i of a
case <-> its patch i): ``case, patient, nodule, diameter_mm, at_edge, label, pathology`` copied from
the table, then per head of the model(s) ``p_malignant`` (image head: the readers' malignancy) and / or
``p_pathology_malignant`` (pathology head), the probability of the class ``malignant`` averaged over the
models (a candidate classifier of :mod:`lungseg.detection`: ``p_nodule``, the probability that the candidate is
a nodule) and, with ``--flips all``, over the 16 flipped views of each patch, and ``models`` (how many were
averaged). The patches get the preprocessing the models were trained with (planes, HU window, size: recorded in
the model file).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungseg.atomic import write_text_atomic
from lungseg.classification.dataset import POSITIVE_CLASS, model_input, read_case, table_of, transform_batch
from lungseg.ingest.errors import IngestError

#: output column of each head's malignancy probability
PROBABILITY_COLUMNS = {"image": "p_malignant", "pathology": "p_pathology_malignant", "candidate": "p_nodule"}
COPIED = ("case", "patient", "nodule", "diameter_mm", "at_edge", "label", "pathology")
#: what must agree between the models of an ensemble
ENSEMBLE_KEYS = ("image_size", "hu_window")


def load_classifiers(paths: Sequence[str | Path]) -> tuple[list[nn.Module], dict[str, Any]]:
    """The classifiers of ``paths`` (eval mode, CPU) and their common metadata; an IngestError naming the file
    for a file that is not a classification model or does not fit the first one."""
    from lungseg.inference.model import load_predictor

    models, first = [], None
    for path in paths:
        model, meta = load_predictor(path)
        if meta.get("task") != "classification":
            raise IngestError(path, "is a segmentation model file",
                              "pass a model.pt trained with `lungseg train --task classification`")
        info = (meta["classification"]["heads"], meta["classification"]["planes"], *(meta[k] for k in ENSEMBLE_KEYS))
        if first is None:
            first = (meta, info)
        elif info != first[1]:
            raise IngestError(path, f"has heads/planes/image size/HU window {info}, {paths[0]} has {first[1]}",
                              "average only the fold models of one classification experiment")
        models.append(model)
    if first is None:
        raise ValueError("no model files given")
    return models, first[0]


#: ``--flips all``: every combination of the flips along x, y, z and the x <-> y swap (the training
#: augmentation's exact moves, :func:`lungseg.classification.dataset.transform_batch`), the identity first
FLIP_VIEWS = tuple(itertools.product((False, True), repeat=4))


@torch.no_grad()
def predict_probabilities(models: Sequence[nn.Module], meta: dict[str, Any], patches: np.ndarray,
                          batch_size: int = 64, flips: bool = False) -> dict[str, np.ndarray]:
    """Head -> probability of its positive class (``malignant``; a candidate head's ``nodule``) per patch (HU patches
    (N, 3, S, S)), the mean over ``models`` and, with ``flips``, over the 16 views of :data:`FLIP_VIEWS`."""
    info = meta["classification"]
    x = model_input(patches, info["planes"], int(meta["image_size"]), meta["hu_window"])
    out = {head: np.zeros(len(x), dtype=np.float64) for head in info["heads"]}
    views = FLIP_VIEWS if flips else FLIP_VIEWS[:1]
    for model in models:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size]
            for view in views:
                flags = torch.tensor([view] * len(batch), dtype=torch.bool)
                logits = model(transform_batch(batch, flags, torch.ones(len(batch))) if any(view) else batch)
                for head, classes in info["heads"].items():
                    prob = torch.softmax(logits[head].float(), dim=1)[:, classes.index(POSITIVE_CLASS[head])]
                    out[head][start:start + batch_size] += prob.numpy() / (len(models) * len(views))
    return out


def classify_case(model_paths: Sequence[str | Path], patch_file: str | Path, table: str | Path,
                  batch_size: int = 64) -> list[dict[str, str]]:
    """The prediction rows of one case (see the module docstring)."""
    models, meta = load_classifiers(model_paths)
    return classify_with(models, meta, patch_file, table, batch_size)


def classify_with(models: Sequence[nn.Module], meta: dict[str, Any], patch_file: str | Path, table: str | Path,
                  batch_size: int = 64, flips: bool = False) -> list[dict[str, str]]:
    """The prediction rows of one case with loaded classifiers (:func:`load_classifiers`)."""
    patches, rows = read_case(patch_file, table)
    probs = predict_probabilities(models, meta, patches, batch_size, flips)
    out = []
    for i, row in enumerate(rows):
        record = {k: _text(row[k]) for k in COPIED}
        record.update({PROBABILITY_COLUMNS[h]: f"{p[i]:.6f}" for h, p in probs.items()})
        record["models"] = str(len(models))
        out.append(record)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_predictions(path: str | Path, rows: list[dict[str, str]], heads: Sequence[str]) -> None:
    """The predictions TSV (header even without nodules), atomically."""
    columns = [*COPIED, *(PROBABILITY_COLUMNS[h] for h in heads), "models"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", nargs="+", required=True, type=Path, metavar="MODEL.pt",
                        help="classification model file(s) of `lungseg train --task classification`; several: "
                             "the mean of their probabilities (fold ensemble)")
    parser.add_argument("--patches", nargs="+", required=True, type=Path, metavar="CASE.patches.h5",
                        help="the cases' nodule patch files; each one's table is the CASE.nodules.tsv beside it")
    parser.add_argument("--table", type=Path, default=None, metavar="CASE.nodules.tsv",
                        help="another nodule table for a single --patches file (default: the one beside it)")
    parser.add_argument("--out", required=True, type=Path, metavar="PREDICTIONS.tsv", help="per-nodule probabilities")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="patches per forward pass (default: 64)")
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--flips", choices=("none", "all"), default="none",
                        help="test-time augmentation: all = the mean over the 16 flips of x, y, z and the x-y swap "
                             "(16x the time; default: none)")


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.table is not None and len(args.patches) != 1:
        print(f"lungseg classify: error: --table names the table of a single case, but {len(args.patches)} --patches "
              "files were given; leave --table out to read each table beside its patch file", file=sys.stderr)
        return 2
    models, meta = load_classifiers(args.model)
    rows = []
    for patch_file in args.patches:
        try:
            rows += classify_with(models, meta, patch_file, args.table or table_of(patch_file), args.batch_size,
                                  args.flips == "all")
        except IngestError:
            raise
        except (FileNotFoundError, ValueError) as exc:  # missing or mismatched patch file / table: one line
            raise IngestError(patch_file, str(exc).splitlines()[0], "pass a case's <case>.patches.h5 and the "
                              "<case>.nodules.tsv written with it by `lungseg nodule-patches`") from None
    write_predictions(args.out, rows, list(meta["classification"]["heads"]))
    return 0
