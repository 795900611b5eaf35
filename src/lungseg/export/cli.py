"""``lungseg export-seg``: a predicted mask as a DICOM-SEG on its source series, for viewers and PACS.

MASK is a label volume in the scan's geometry (``lungseg predict`` or ``lungseg lung-mask`` output);
``--dicom`` the series it was predicted from. The SEG references the series' instances and carries the
source study's patient and study modules: the file identifies the patient. Write it to an
``exports/`` folder, never into ``results/`` (the workflow does so); the command says so on stderr.
Its log names no UID and no patient. With ``--check`` the SEG is read back through its references
and compared with the mask on the source slices, voxel for voxel.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from lungseg.export.dicom_seg import LABEL_KINDS, model_version, read_mask, write_dicom_seg
from lungseg.export.planes import mask_on_planes
from lungseg.export.readback import read_back_seg
from lungseg.export.source import read_source_series
from lungseg.ingest.dicom_series import DEFAULT_MAX_GAP
from lungseg.ingest.errors import IngestError
from lungseg.ingest.pseudonym import Scrubber, add_secret_arguments, resolve_secret, scrub_diagnostics

log = logging.getLogger("lungseg.export_seg")
MODEL_FIX = "pass the model.pt written by `lungseg train` that made the prediction"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mask", type=Path, help="predicted mask in the scan's geometry (.nii.gz, ...; `lungseg predict` output)")
    parser.add_argument("--dicom", type=Path, required=True, metavar="SERIES_DIR",
                        help="the DICOM series folder the mask was predicted from (the SEG references its instances)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.dcm",
                        help="DICOM-SEG file to write; it carries patient identifiers: keep it under exports/, not results/")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="model file(s) the mask was predicted with (repeat for a fold ensemble): the algorithm "
                             "version is the lungseg version + a hash of them; the target is read from the first")
    parser.add_argument("--experiment", default=None, metavar="NAME",
                        help="experiment name: the algorithm is called 'lungseg NAME' (default: the experiment folder of "
                             "results/experiments/NAME/folds/K/model.pt, else the model file's name)")
    parser.add_argument("--label", choices=LABEL_KINDS, default=None,
                        help="the target the mask shows (default: the model file's label)")
    parser.add_argument("--series", default=None, metavar="SELECTOR",
                        help="pick one series of a folder holding several (the `series` column of `lungseg discover`; "
                             "needs the same secret)")
    add_secret_arguments(parser, "for --series")
    parser.add_argument(
        "--max-gap", type=float, default=DEFAULT_MAX_GAP,
        help=f"as for `lungseg ingest`: gaps up to this many slice steps are accepted (default {DEFAULT_MAX_GAP})")
    parser.add_argument("--check", action="store_true",
                        help="read the SEG back through its references and require it to equal the mask on the source slices")


def experiment_name(model: Path) -> str:
    """NAME of ``.../experiments/NAME/folds/K/model.pt``, else the model file's stem."""
    parts = model.resolve().parts if model.exists() else model.parts
    if len(parts) >= 4 and parts[-3] == "folds":
        return parts[-4]
    return model.stem


def model_label(path: Path) -> str:
    """The target (``label``) recorded in a lungseg model file."""
    from lungseg.training.checkpoint import MODEL_FORMAT, load_checkpoint  # torch: only when needed

    try:
        state = load_checkpoint(path)
    except (ValueError, FileNotFoundError) as exc:
        raise IngestError(path, "cannot be read as a lungseg model file", MODEL_FIX) from exc
    if state.get("format") != MODEL_FORMAT or not state.get("label"):
        raise IngestError(path, "is not a lungseg model file (no label recorded)", MODEL_FIX)
    return str(state["label"])


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    scrub = Scrubber()
    scrub_diagnostics(scrub)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines name the source datasets
    started = time.perf_counter()
    try:
        version, short_hash = model_version(args.model)
        label = args.label or model_label(args.model[0])
        name = f"lungseg {args.experiment or experiment_name(args.model[0])}"
        secret = resolve_secret(args.secret_env, args.secret_file, args.allow_default_secret) if args.series else None
        source = read_source_series(args.dicom, selector=args.series, secret=secret, max_gap=args.max_gap, scrubber=scrub)
        result = write_dicom_seg(args.mask, args.dicom, args.output, model_name=name, model_version=version,
                                 label_kind=label, device_serial=short_hash, source=source)
        check = ""
        if args.check:
            expected, _ = mask_on_planes(read_mask(args.mask), source.planes)
            back = read_back_seg(args.output, args.dicom, source=source)
            differing = int(np.count_nonzero(back != expected))  # segment number = mask value (dicom_seg.segments_for)
            if differing:
                args.output.unlink(missing_ok=True)
                raise IngestError(args.output, f"read back differs from the mask in {differing} voxel(s); removed",
                                  "report this as a lungseg bug, with the mask's and the series' geometry")
            check = "; read back through its references: equal to the mask on every source slice"
    except IngestError as exc:
        raise IngestError(scrub(exc.path), scrub(exc.reason), scrub(exc.fix)) from None
    print(f"lungseg export-seg: warning: {args.output} carries the patient's identifiers and the study's UIDs "
          "(DICOM-SEG patient and study modules): keep it under exports/, out of results/ and reports", file=sys.stderr)
    resampled = f" ({result.resampled} resampled onto their planes)" if result.resampled else ""
    log.info("%s (%s, %s): segments %s; %d frame(s) on %d source slice(s)%s, %.2f s%s -> %s", name, label, version,
             ", ".join(result.segments), result.frames, result.slices, resampled, time.perf_counter() - started, check,
             scrub(str(args.output)))
    return 0
