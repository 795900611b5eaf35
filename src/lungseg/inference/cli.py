"""``lungseg predict``: mask a study with a trained model; output in the scan's own geometry."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from lungseg.casefile import read_case
from lungseg.geometry import write_volume
from lungseg.inference.predict import predict_volume
from lungseg.ingest.scan import read_scan
from lungseg.training.checkpoint import load_model

log = logging.getLogger("lungseg.predict")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="ingested case (.h5), DICOM series folder, or CT volume (.nii.gz, .mha, ...)")
    parser.add_argument("--model", type=Path, required=True, help="model file written by `lungseg train` (model.pt)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="mask volume to write (.nii.gz, .mha, ...)")
    parser.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.input.suffix == ".h5":
        case = read_case(args.input, labels=False)
        hu, geometry, name = case.image, case.geometry, case.case_id
    else:
        hu, geometry, _ = read_scan(args.input)
        name = "input scan"
    model, meta = load_model(args.model, map_location="cpu")
    mask = predict_volume(model, meta, hu, batch_size=args.batch_size)
    write_volume(str(args.output), mask, geometry)
    log.info("%s: %d slices, %d voxels predicted %s -> %s", name, hu.shape[0], int(mask.sum()), meta.get("label", "?"), args.output)
    return 0
