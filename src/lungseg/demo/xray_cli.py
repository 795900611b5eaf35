"""``lungseg demo-xray``: write the chest X-ray demo (synthetic PA radiographs + lung masks).

The radiographs are projections of the CT demo's phantoms (:mod:`lungseg.demo.radiograph`), written
as an image folder + mask folder (``_mask`` suffix, 0/255), lungseg's right/left labels, a few DICOM
DX files and ``patients.tsv`` (:mod:`lungseg.demo.xray_files`). Output names only case ids and
paths, never the fake patient identity inside the DICOM files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from lungseg.demo.radiograph import make_radiograph
from lungseg.demo.xray_files import write_radiograph_files, write_sheet, xray_case_ids

DEFAULT_SEED = 2026


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True,
                        help="folder that receives images/, masks/, labels/, dicom/ and patients.tsv")
    parser.add_argument("--n-cases", type=int, default=40, help="number of radiographs, cxr001..cxr<N> (default 40)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"demo seed (default {DEFAULT_SEED})")
    parser.add_argument("--size", type=int, default=256, help="rows and columns of each image (default 256)")
    parser.add_argument("--dicom-every", type=int, default=4, metavar="K",
                        help="also write every K-th case as DICOM DX, every other one MONOCHROME1 (default 4; 0: none)")
    parser.add_argument("--lung-fraction", type=float, default=0.25,
                        help="a pixel is lung field when the lung's path along the ray is at least this fraction of "
                             "the body's (default 0.25)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.seed < 0 or args.n_cases < 1 or args.size < 32 or args.dicom_every < 0:
        raise SystemExit("lungseg demo-xray: need --seed >= 0, --n-cases >= 1, --size >= 32 and --dicom-every >= 0")
    if not 0.0 < args.lung_fraction < 1.0:
        raise SystemExit("lungseg demo-xray: --lung-fraction must be within (0, 1)")
    rows = []
    ids = xray_case_ids(args.n_cases)
    for i, case_id in enumerate(tqdm(ids, desc="radiographs", unit="case", disable=args.no_progress or len(ids) < 2)):
        radiograph = make_radiograph(case_id, args.seed, args.size, lung_fraction=args.lung_fraction)
        dicom = args.dicom_every > 0 and (i + 1) % args.dicom_every == 0
        monochrome1 = dicom and ((i + 1) // args.dicom_every) % 2 == 1
        rows.append(write_radiograph_files(radiograph, args.out, args.seed, dicom, monochrome1))
    write_sheet(rows, args.out / "patients.tsv")
    for row in rows:
        print(f"{row['case_id']}\t{args.out / row['image']}", flush=True)
    return 0
