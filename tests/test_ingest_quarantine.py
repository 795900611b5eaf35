"""Every bad input of issue 3 is quarantined with its own reason; good cases still ingest; the table lists them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from ingest_data import copy_series, demo_case, edit, encapsulate_frames, slice_files

from lungseg.casefile import QuarantinedCaseError, open_case, read_case, read_status
from lungseg.cli import main
from lungseg.ingest.quarantine import quarantine_rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_case(tmp_path_factory.mktemp("demo"))


def _corrupt_file(folder: Path, demo) -> dict:
    (folder / "notes_without_suffix").write_bytes(b"this is not DICOM\n" * 20)
    return {}


def _corrupt_header(folder: Path, demo) -> dict:
    path = slice_files(folder)[3]
    path.write_bytes(path.read_bytes()[:300])  # cut inside the header
    return {}


def _truncated_pixels(folder: Path, demo) -> dict:
    path = slice_files(folder)[5]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return {}


def _two_series(folder: Path, demo) -> dict:
    files = slice_files(folder)
    new_uid = pydicom.uid.generate_uid()
    edit(files[:5], lambda ds, k: setattr(ds, "SeriesInstanceUID", new_uid))
    return {}


def _missing_slice(folder: Path, demo) -> dict:
    slice_files(folder)[6].unlink()
    return {}


def _duplicate_slice(folder: Path, demo) -> dict:
    path = slice_files(folder)[4]
    shutil.copy(path, folder / "copy_of_slice.dcm")
    return {}


def _scout_only(folder: Path, demo) -> dict:
    files = slice_files(folder)
    for path in files[1:]:
        path.unlink()
    edit(files[:1], lambda ds, k: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    return {}


def _non_axial(folder: Path, demo) -> dict:
    def sagittal(ds, k):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-100 + 2.0 * k, -100, 100]

    edit(slice_files(folder), sagittal)
    return {}


def _mr(folder: Path, demo) -> dict:
    edit(slice_files(folder), lambda ds, k: setattr(ds, "Modality", "MR"))
    return {}


def _rgb(folder: Path, demo) -> dict:
    def rgb(ds, k):
        if k == 2:
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * 3)

    edit(slice_files(folder), rgb)
    return {}


def _no_decoder(folder: Path, demo) -> dict:
    # JPEG 2000 Part 2 multi-component: no pydicom decoder plugin exists for it
    edit(
        slice_files(folder),
        lambda ds, k: encapsulate_frames(ds, [b"\xff\x4f\xff\x51" + bytes(64)], "1.2.840.10008.1.2.4.92"),
    )
    return {}


def _mask_wrong_shape(folder: Path, demo) -> dict:
    lung = sitk.ReadImage(str(demo.lung_path))
    sitk.WriteImage(lung[:, :, :-3], str(folder.parent / "lung_short.nii.gz"))  # 3 slices fewer
    return {"label": f"lung={folder.parent / 'lung_short.nii.gz'}"}


def _mask_empty(folder: Path, demo) -> dict:
    lung = sitk.ReadImage(str(demo.lung_path))
    empty = sitk.Image(lung.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(lung)
    sitk.WriteImage(empty, str(folder.parent / "lung_empty.nii.gz"))
    return {"label": f"lung={folder.parent / 'lung_empty.nii.gz'}"}


def _malformed_xml(folder: Path, demo) -> dict:
    xml = folder.parent / "reads.xml"
    xml.write_text("<LidcReadMessage><readingSession><unblindedReadNodule></readingSession>")
    return {"lidc_xml": str(xml)}


def _xml_no_match(folder: Path, demo) -> dict:
    xml = folder.parent / "other.xml"
    xml.write_text(
        '<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov"><readingSession>'
        "<unblindedReadNodule><noduleID>1</noduleID><roi><imageZposition>9999.0</imageZposition>"
        "<imageSOP_UID>1.2.3.4.5.6.7</imageSOP_UID><inclusion>TRUE</inclusion>"
        + "".join(
            f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
            for x, y in ((10, 10), (14, 10), (14, 14), (10, 14))
        )
        + "</roi></unblindedReadNodule></readingSession></LidcReadMessage>"
    )
    return {"lidc_xml": str(xml)}


def _empty_folder(folder: Path, demo) -> dict:
    for path in folder.iterdir():
        path.unlink()
    return {}


BAD_INPUTS = {
    "non-DICOM file": (_corrupt_file, "is not a DICOM file"),
    "corrupt header": (_corrupt_header, "is an incomplete DICOM file"),
    "truncated pixel data": (_truncated_pixels, "has truncated pixel data"),
    "two series in one folder": (_two_series, "holds 2 image series"),
    "missing slice": (_missing_slice, "missing slice(s)"),
    "duplicate slice": (_duplicate_slice, "(duplicate slice)"),
    "scout only": (_scout_only, "holds only scout/localizer images"),
    "non-axial": (_non_axial, "is a sagittal image, not axial"),
    "MR modality": (_mr, "has modality MR, not CT"),
    "RGB image": (_rgb, "is a colour image (RGB"),
    "compressed without decoder": (_no_decoder, "for which no decoder is installed"),
    "mask of wrong shape": (_mask_wrong_shape, "has the wrong shape or field of view"),
    "empty mask": (_mask_empty, "is empty (no labelled voxel)"),
    "malformed XML": (_malformed_xml, "is not well-formed XML"),
    "XML matching no slice": (_xml_no_match, "none falls on a slice of this series"),
    "empty folder": (_empty_folder, "contains no DICOM files (empty folder)"),
}


def _ingest_args(folder: Path, extra: dict, out: Path, status: Path | None) -> list[str]:
    args = ["ingest", str(folder), "--case-id", "bad01", "-o", str(out)]
    if "label" in extra:
        args += ["--label", extra["label"]]
    if "lidc_xml" in extra:
        args += ["--lidc-xml", extra["lidc_xml"]]
    return args + (["--status", str(status)] if status else [])


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_quarantined_with_its_reason(name, demo, tmp_path, capsys):
    make, expected = BAD_INPUTS[name]
    folder = copy_series(demo.dicom_dir, tmp_path / "case" / "dicom")
    extra = make(folder, demo)
    out, status = tmp_path / "bad01.h5", tmp_path / "bad01.json"

    # without --status: exit 1, one line naming the file and the fix
    assert main(_ingest_args(folder, extra, out, None)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err and "Fix:" in err, err
    assert not out.exists()

    # with --status: exit 0, status and placeholder case file record the reason
    assert main(_ingest_args(folder, extra, out, status)) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "quarantined" and record["case_id"] == "bad01"
    assert expected in record["reason"], record
    assert record["file"] and record["fix"]
    assert str(tmp_path) in record["file"]  # names the offending file or folder
    assert read_status(out)["status"] == "quarantined"
    with pytest.raises(QuarantinedCaseError, match="quarantined at ingest"):
        open_case(out)
    with pytest.raises(QuarantinedCaseError):
        read_case(out)


def test_good_and_bad_cases_give_a_table(demo, tmp_path, capsys):
    bad = copy_series(demo.dicom_dir, tmp_path / "bad")
    _missing_slice(bad, demo)
    statuses = []
    for case_id, folder in (("good01", demo.dicom_dir), ("bad01", bad)):
        statuses.append(tmp_path / f"{case_id}.json")
        assert (
            main(
                [
                    "ingest",
                    str(folder),
                    "--case-id",
                    case_id,
                    "--label",
                    f"lung={demo.lung_path}",
                    "-o",
                    str(tmp_path / f"{case_id}.h5"),
                    "--status",
                    str(statuses[-1]),
                ]
            )
            == 0
        )
    ok = json.loads(statuses[0].read_text())
    assert ok["status"] == "ok" and ok["shape"] == list(demo.shape) and ok["labels"]["lung"] > 0
    assert read_case(tmp_path / "good01.h5").image.shape == demo.shape

    rows = quarantine_rows(statuses)
    assert [r["case"] for r in rows] == ["bad01"] and "missing slice" in rows[0]["reason"]
    table = tmp_path / "quarantine.tsv"
    assert main(["quarantine-table", *map(str, statuses), "-o", str(table), "--require-ok"]) == 0
    lines = table.read_text().splitlines()
    assert lines[0] == "case\tfile\treason\tsuggested fix" and lines[1].startswith("bad01\t") and len(lines) == 2

    # none good: the table is still written, and the command says so and fails
    assert main(["quarantine-table", str(statuses[1]), "-o", str(table), "--require-ok"]) == 1
    assert "no case could be ingested" in capsys.readouterr().err
    assert table.read_text().count("\n") == 2


def test_status_file_that_is_not_one_is_refused(tmp_path):
    bogus = tmp_path / "s.json"
    bogus.write_text('{"hello": 1}')
    assert main(["quarantine-table", str(bogus), "-o", str(tmp_path / "q.tsv")]) == 1


def test_scouts_beside_the_series_are_dropped(demo, tmp_path):
    folder = copy_series(demo.dicom_dir, tmp_path / "dicom")
    scout = pydicom.dcmread(slice_files(folder)[0])
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SeriesInstanceUID = pydicom.uid.generate_uid()
    scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal topogram
    scout.save_as(folder / "scout.dcm", enforce_file_format=True)
    status = tmp_path / "s.json"
    assert main(["ingest", str(folder), "--case-id", "c1", "-o", str(tmp_path / "c1.h5"), "--status", str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "ok" and record["n_slices"] == demo.shape[0]
    assert any("scout" in note for note in record["notes"])


def test_empty_nodule_mask_is_a_negative_case(demo, tmp_path):
    nodule = sitk.ReadImage(str(demo.nodule_path))
    empty = sitk.Image(nodule.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(nodule)
    sitk.WriteImage(empty, str(tmp_path / "n.nii.gz"))
    assert (
        main(
            [
                "ingest",
                str(demo.dicom_dir),
                "--case-id",
                "c1",
                "--label",
                f"nodule={tmp_path / 'n.nii.gz'}",
                "-o",
                str(tmp_path / "c1.h5"),
            ]
        )
        == 0
    )
    assert not np.any(read_case(tmp_path / "c1.h5").labels["nodule"])


def test_ok_status_carries_the_readers_median_malignancy_of_lidc_nodules() -> None:
    from lungseg.casefile import CaseVolume
    from lungseg.geometry import Geometry
    from lungseg.ingest.quarantine import ok_status

    geometry = Geometry((1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    image = np.zeros((2, 4, 4), np.int16)
    table = [{"nodule": 1, "malignancy": [4, 5], "malignancy_median": 4.5},
             {"nodule": 2, "malignancy": [None], "malignancy_median": None}]
    rated = CaseVolume("c1", image, geometry, annotation_attrs={"lidc_nodules": json.dumps(table)})
    assert ok_status(rated, 1.0)["malignancy_medians"] == [4.5, None]
    assert "malignancy_medians" not in ok_status(CaseVolume("c2", image, geometry), 1.0)  # no reader XML
