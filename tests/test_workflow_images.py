"""`source: images` end to end at tiny size: the image_sheet checkpoint finds images and masks in a paired-folder
layout (a mask without an image reported, a truncated image quarantined), then split, training of a 2-D model on
one-slice cases, inference, metrics with the radiograph baseline, and the report run unchanged."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO
from PIL import Image

pytestmark = pytest.mark.slow
SECRET = "workflow-images-secret-17"
SIZE = 64


def radiograph(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit radiograph-like image (dark outside, bright body, two dark lungs of random size) and its 0/255 mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = np.full((SIZE, SIZE), 15.0)
    image[4:-4, 5:-5] = 190.0
    mask = np.zeros((SIZE, SIZE), bool)
    for cx in (20, 44):
        ry, rx = rng.uniform(14, 22), rng.uniform(6, 9)
        mask |= ((yy - 30) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    image[mask] = 70.0
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def smk(workdir: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, LUNGSEG_PSEUDONYM_KEY=SECRET, OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout + proc.stderr


def table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = tmp_path_factory.mktemp("images")
    data = work / "xray"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for k in range(10):
        image, mask = radiograph(k)
        Image.fromarray(image).save(data / "images" / f"pat{k:02d}_pa.png")
        Image.fromarray(mask).save(data / "masks" / f"pat{k:02d}_pa_mask.png")
    Image.fromarray(radiograph(99)[1]).save(data / "masks" / "pat99_pa_mask.png")  # a mask without image
    truncated = data / "images" / "pat10_pa.png"  # an unreadable image: quarantined, the others go on
    Image.fromarray(radiograph(10)[0]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    Image.fromarray(radiograph(10)[1]).save(data / "masks" / "pat10_pa_mask.png")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(
        source="images",
        images={"root": str(data), "layout": "auto", "patient_pattern": r"pat(?P<patient>\d+)_"},
        lung_mask={"method": "radiograph_otsu"},
        split={"seed": 1, "fractions": [0.6, 0.2, 0.2], "folds": 1, "stratify": False},
        experiments={"reference": "unet", "unet": {}, "dense_unet": False},
    )
    config["train"].update(base_channels=4, depth=2, image_size=32, hu_window=[0, 1000], roi="none", epochs=30,
                           batch_size=4, threads=1, augment=False)
    config["scaling"]["enabled"] = False
    config["evaluate"]["bootstrap_samples"] = 50
    config["predict"]["threads"] = 1
    (work / "config").mkdir()
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    log = smk(work, "--cores", "2")
    return work, log


def test_sheet_lists_the_images_and_reports_the_orphan_mask(run):
    work, _ = run
    cases = table(work / "results/images/cases.tsv")
    assert len(cases) == 11 and all(r["patient_from"] == "pattern" for r in cases)
    assert all(r["case_id"].startswith("i") and "pat" not in r["case_id"] for r in cases)
    skipped = table(work / "results/images/skipped.tsv")
    assert [(Path(r["path"]).name, r["reason"]) for r in skipped] == [
        ("pat99_pa_mask.png", "mask without image (no image of this stem)")]


def test_the_truncated_image_is_quarantined_and_the_others_go_on(run):
    work, _ = run
    quarantined = table(work / "results/quarantine.tsv")
    assert len(quarantined) == 1 and "pat10_pa.png" in json.dumps(quarantined)
    assert len(table(work / "results/split.tsv")) == 10


def test_metrics_of_the_network_and_the_radiograph_baseline(run):
    work, _ = run
    rows = table(work / "results/metrics/metrics.csv")
    methods = {r["method"] for r in rows}
    assert {"unet", "classical_radiograph_otsu", "all_background"} <= methods, methods
    baseline = [float(r["dice"]) for r in rows if r["method"] == "classical_radiograph_otsu"]
    assert baseline and min(baseline) > 0.7  # the tiny images are easy for a threshold
    network = [float(r["dice"]) for r in rows if r["method"] == "unet"]
    assert network and np.mean(network) > 0.5  # a 2-D model learns on one-slice cases (about 0.95 after 30 epochs)
    assert (work / "results/report/metrics.html").is_file()
    qa = table(work / "results/lungmask/qa.tsv")
    assert len(qa) == 10 and {r["method"] for r in qa} == {"radiograph_otsu"}
