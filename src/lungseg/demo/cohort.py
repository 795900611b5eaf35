"""The synthetic demo cohort: per-case DICOM series plus NIfTI lung / nodule labels, from a seed.

Layout, per case::

    <out_root>/<case_id>/dicom/<random hex>.dcm    one CT slice per file
    <out_root>/<case_id>/labels/lung.nii.gz        uint8, 1 = right lung, 2 = left lung
    <out_root>/<case_id>/labels/nodule.nii.gz      uint8, 0/1
    <out_root>/<case_id>/labels/nodules.json       the nodules: centre_zyx, diameter_mm, kind, position, side

Everything about a case (anatomy, grid, storage, UIDs, file names, identity) derives from
``(seed, case_id)`` only, so cases can be written in any order, in parallel, or one at a time.
A case is written into a hidden sibling folder and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lungseg.demo.dicom_writer import PatientIdentity, write_ct_series
from lungseg.demo.phantom import Nodule, NoduleSettings, Phantom, draw_nodule_count, make_phantom
from lungseg.geometry import Geometry, write_volume

CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
_FIRST_NAMES = ("ALICE", "BRUNO", "CLARA", "DMITRI", "EVELYN", "FARID", "GRETA", "HUGO", "IMANI", "JONAS",
                "KAISA", "LORENZO", "MIRELA", "NILS", "OPHELIA", "PAVEL", "QUINN", "ROSALIND", "SOREN", "TAMSIN")
_TOKEN_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class DemoCase:
    case_id: str
    case_dir: Path
    dicom_dir: Path
    lung_path: Path
    nodule_path: Path
    nodules_path: Path  # labels/nodules.json
    geometry: Geometry
    shape: tuple[int, int, int]  # (z, y, x)
    identity: PatientIdentity
    nodules: list[Nodule]
    storage: str  # "signed" / "unsigned"
    descending_instances: bool


def demo_case_ids(n: int) -> list[str]:
    """``["demo001", "demo002", ...]`` (``n`` ids)."""
    return [f"demo{i:03d}" for i in range(1, n + 1)]


#: the demo's simulated hospitals, by case number: 3 : 2 : 1 cases (different sizes; same scanner model)
DEMO_SITE_CYCLE = ("site_a", "site_b", "site_a", "site_c", "site_a", "site_b")


def demo_site(case_id: str) -> str:
    """The simulated hospital of a demo case (``demo001`` -> ``site_a``): sites of 3 : 2 : 1 cases, the
    federated runs' partition (``train.mode: flower``). Only the sizes differ by site: the scan grids vary
    per case, not per site."""
    return DEMO_SITE_CYCLE[(int(case_id.removeprefix("demo")) - 1) % len(DEMO_SITE_CYCLE)]


def _digest(*parts: object) -> int:
    """A stable 64-bit integer from ``parts`` (unlike ``hash()``, identical across processes)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def demo_dicom_names(seed: int, n_slices: int) -> list[str]:
    """The slice file names of every demo series, in z order: random-looking, so name order is not z order.

    They depend only on ``seed`` and the slice index (scanners also reuse names across series), so the
    workflow knows each series' files before they exist.
    """
    return [f"{_digest('file', seed, k):016x}.dcm" for k in range(n_slices)]


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The case's own random generator, derived from ``seed`` and ``case_id`` only."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, _digest("case", case_id)]))


def demo_identity(case_id: str, seed: int) -> PatientIdentity:
    """Distinctive fake identity of a demo case (unlikely to appear anywhere by chance)."""
    rng = np.random.default_rng(_digest("identity", seed, case_id))

    def token(n: int) -> str:
        return "".join(rng.choice(list(_TOKEN_ALPHABET), size=n))

    first = _FIRST_NAMES[int(rng.integers(len(_FIRST_NAMES)))]
    birth = f"{rng.integers(1938, 1986)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    study = f"{rng.integers(2014, 2025)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    return PatientIdentity(
        patient_name=f"DEMO^{first}^{token(4)}",
        patient_id=f"LSG-PID-{rng.integers(10000, 100000)}",
        birth_date=birth,
        sex=str(rng.choice(["F", "M"])),
        accession_number=f"ACC{rng.integers(1_000_000, 10_000_000)}",
        institution_name=f"Demo General Hospital {token(4)}",
        study_date=study,
        study_time=f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}",
        series_description="CHEST LUNG DEMO",
    )


@dataclass
class DemoScan:
    """A generated (not yet written) case; ``rng`` continues into its UIDs and file names."""

    case_id: str
    phantom: Phantom
    geometry: Geometry
    storage: str
    descending_instances: bool
    identity: PatientIdentity
    rng: np.random.Generator


def generate_demo_scan(
    case_id: str, seed: int, n_slices: int = 48, size: int = 256, nodule_settings: NoduleSettings | None = None
) -> DemoScan:
    """Draw one case's grid, storage, numbering and phantom from ``(seed, case_id)``.

    ``nodule_settings`` (default :class:`NoduleSettings()`, the cohort as it always was) sets the nodules.
    """
    if not CASE_ID_PATTERN.fullmatch(case_id):
        raise ValueError(f"invalid case id {case_id!r}: use letters, digits, '_', '-', '.'")
    if n_slices < 4 or size < 32:
        raise ValueError(f"need at least 4 slices of 32 x 32, got {n_slices} x {size} x {size}")
    rng = case_rng(seed, case_id)
    # the field of view covers the chest whatever the matrix, and the lungs fill ~87% of the slices
    pixel = round(float(rng.uniform(330.0, 400.0)) / size, 4)
    slice_spacing = round(float(rng.uniform(195.0, 245.0)) / 0.87 / n_slices, 2)
    half = (size - 1) / 2 * pixel
    origin = (
        round(-half + float(rng.uniform(-15, 15)), 2),
        round(-half + float(rng.uniform(-15, 25)), 2),
        round(float(rng.uniform(-420.0, -120.0)), 2),
    )
    storage = str(rng.choice(["signed", "unsigned"]))
    descending = bool(rng.random() < 0.5)
    settings = nodule_settings if nodule_settings is not None else NoduleSettings()
    n_nodules = draw_nodule_count(rng, settings)
    geometry = Geometry(spacing=(pixel, pixel, slice_spacing), origin=origin, direction=IDENTITY_DIRECTION)
    phantom = make_phantom(rng, n_slices, size, geometry.spacing, n_nodules=n_nodules, nodule_settings=settings)
    return DemoScan(case_id, phantom, geometry, storage, descending, demo_identity(case_id, seed), rng)


def write_demo_case(
    case_id: str, out_root: Path, seed: int, n_slices: int = 48, size: int = 256,
    nodule_settings: NoduleSettings | None = None,
) -> DemoCase:
    """Generate one case and write it to ``out_root/<case_id>`` (replacing any previous version)."""
    scan = generate_demo_scan(case_id, seed, n_slices=n_slices, size=size, nodule_settings=nodule_settings)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / case_id
    tmp = out_root / f".{case_id}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write_ct_series(
            scan.phantom.hu, scan.geometry, tmp / "dicom", scan.identity, scan.rng, scan.storage,
            descending_instances=scan.descending_instances, file_names=demo_dicom_names(seed, n_slices),
        )
        write_volume(str(tmp / "labels" / "lung.nii.gz"), scan.phantom.lung, scan.geometry)
        write_volume(str(tmp / "labels" / "nodule.nii.gz"), scan.phantom.nodule, scan.geometry)
        (tmp / "labels" / "nodules.json").write_text(nodules_json(scan.phantom.nodules))
        _swap_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return DemoCase(
        case_id=case_id,
        case_dir=final,
        dicom_dir=final / "dicom",
        lung_path=final / "labels" / "lung.nii.gz",
        nodule_path=final / "labels" / "nodule.nii.gz",
        nodules_path=final / "labels" / "nodules.json",
        geometry=scan.geometry,
        shape=scan.phantom.hu.shape,
        identity=scan.identity,
        nodules=scan.phantom.nodules,
        storage=scan.storage,
        descending_instances=scan.descending_instances,
    )


def nodules_json(nodules: Sequence[Nodule]) -> str:
    """The ``labels/nodules.json`` sidecar: a list of ``{center_zyx, diameter_mm, kind, position, side}``.

    ``center_zyx`` is the continuous ``(z, y, x)`` voxel index of the centre in the label volume.
    """
    if not nodules:
        return "[]\n"
    return "[\n" + ",\n".join(" " + json.dumps(n.as_dict()) for n in nodules) + "\n]\n"  # one nodule a line


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``, moving an existing ``final`` aside first."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f".{final.name}.old{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def write_demo_cohort(
    out_root: Path,
    n_cases: int,
    seed: int,
    n_slices: int = 48,
    size: int = 256,
    *,
    case_ids: Sequence[str] | None = None,
    progress: bool = True,
    nodule_settings: NoduleSettings | None = None,
) -> list[DemoCase]:
    """Write ``case_ids`` (default: ``demo_case_ids(n_cases)``) under ``out_root``, with a progress bar."""
    ids = list(case_ids) if case_ids is not None else demo_case_ids(n_cases)
    return [
        write_demo_case(case_id, out_root, seed, n_slices=n_slices, size=size, nodule_settings=nodule_settings)
        for case_id in tqdm(ids, desc="demo cases", unit="case", disable=not progress)
    ]
