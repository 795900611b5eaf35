"""Write LIDC-IDRI reader XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) as TCIA ships it.

The structure follows the real files: a ``ResponseHeader`` naming the series and study, then one
``readingSession`` per reader holding ``unblindedReadNodule`` (``noduleID``, ``characteristics`` for
nodules >= 3 mm, one ``roi`` per outline: ``imageZposition``, ``imageSOP_UID``, ``inclusion``,
``edgeMap`` x/y points; a nodule < 3 mm is one ``roi`` with a single point and no characteristics) and
``nonNodule`` (``nonNoduleID``, ``imageZposition``, ``imageSOP_UID``, one ``locus`` point).
Coordinates are pixel indices: x = column, y = row.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

LIDC_NAMESPACE = "http://www.nih.gov"
XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA_LOCATION = f"{LIDC_NAMESPACE}  http://troll.rad.med.umich.edu/lidc/LidcReadMessage.xsd"
#: the nine LIDC characteristics in the order the real files write them
CHARACTERISTICS = (
    "subtlety", "internalStructure", "calcification", "sphericity", "margin",
    "lobulation", "spiculation", "texture", "malignancy",
)
CHARACTERISTIC_RANGES = {name: (1, 5) for name in CHARACTERISTICS} | {"internalStructure": (1, 4), "calcification": (1, 6)}


@dataclass
class XmlRoi:
    """One outline (or, for a nodule < 3 mm, one point) on one slice."""

    z_mm: float  # imageZposition
    sop_uid: str  # imageSOP_UID: the SOPInstanceUID of that slice
    xy: list[tuple[int, int]]  # edgeMap points (x = column, y = row), in drawing order
    inclusion: bool = True


@dataclass
class XmlNodule:
    nodule_id: str
    rois: list[XmlRoi]
    characteristics: dict[str, int] | None = None  # None for nodules < 3 mm, as in the real files


@dataclass
class XmlNonNodule:
    non_nodule_id: str
    z_mm: float
    sop_uid: str
    xy: tuple[int, int]


@dataclass
class XmlSession:
    """One reader's reading session."""

    radiologist_id: str
    nodules: list[XmlNodule] = field(default_factory=list)
    non_nodules: list[XmlNonNodule] = field(default_factory=list)


@dataclass(frozen=True)
class XmlHeader:
    series_uid: str
    study_uid: str
    message_uid: str  # the ``uid`` attribute of LidcReadMessage
    message_id: int
    date_request: str = "2007-11-01"
    time_request: str = "12:30:44"
    date_service: str = "2008-08-18"
    time_service: str = "02:05:51"


def _q(tag: str) -> str:
    return f"{{{LIDC_NAMESPACE}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, _q(tag))
    if text is not None:
        el.text = text
    return el


def _point(parent: ET.Element, tag: str, x: int, y: int) -> None:
    el = _sub(parent, tag)
    _sub(el, "xCoord", str(int(x)))
    _sub(el, "yCoord", str(int(y)))


def _z(z_mm: float) -> str:
    return f"{z_mm:.6f} "  # as the real files write it, trailing space included


def _check_characteristics(nodule: XmlNodule) -> None:
    values = nodule.characteristics or {}
    if set(values) != set(CHARACTERISTICS):
        raise ValueError(f"nodule {nodule.nodule_id!r}: characteristics must be exactly {', '.join(CHARACTERISTICS)}")
    for name, value in values.items():
        lo, hi = CHARACTERISTIC_RANGES[name]
        if not lo <= int(value) <= hi:
            raise ValueError(f"nodule {nodule.nodule_id!r}: {name} {value} is outside {lo}-{hi}")


def lidc_xml_tree(header: XmlHeader, sessions: list[XmlSession]) -> ET.ElementTree:
    """The ``LidcReadMessage`` element tree of ``sessions`` (one per reader) on the series of ``header``."""
    ET.register_namespace("", LIDC_NAMESPACE)
    ET.register_namespace("xsi", XSI_NAMESPACE)
    root = ET.Element(_q("LidcReadMessage"), {"uid": header.message_uid, f"{{{XSI_NAMESPACE}}}schemaLocation": SCHEMA_LOCATION})
    head = _sub(root, "ResponseHeader")
    for tag, text in (
        ("Version", "1.8.1"), ("MessageId", str(header.message_id)), ("DateRequest", header.date_request),
        ("TimeRequest", header.time_request), ("RequestingSite", "removed"), ("ServicingSite", "removed"),
        ("TaskDescription", "Second unblinded read"), ("CtImageFile", "removed"), ("SeriesInstanceUid", header.series_uid),
        ("DateService", header.date_service), ("TimeService", header.time_service),
        ("ResponseDescription", "1 - Reading complete"), ("StudyInstanceUID", header.study_uid),
    ):
        _sub(head, tag, text)
    for session in sessions:
        el = _sub(root, "readingSession")
        _sub(el, "annotationVersion", "3.12")
        _sub(el, "servicingRadiologistID", session.radiologist_id)
        for nodule in session.nodules:
            if not nodule.rois:
                raise ValueError(f"nodule {nodule.nodule_id!r} has no roi")
            node = _sub(el, "unblindedReadNodule")
            _sub(node, "noduleID", nodule.nodule_id)
            if nodule.characteristics is not None:
                _check_characteristics(nodule)
                block = _sub(node, "characteristics")
                for name in CHARACTERISTICS:
                    _sub(block, name, str(int(nodule.characteristics[name])))
            for roi in nodule.rois:
                if not roi.xy:
                    raise ValueError(f"nodule {nodule.nodule_id!r}: an roi without edgeMap points")
                r = _sub(node, "roi")
                _sub(r, "imageZposition", _z(roi.z_mm))
                _sub(r, "imageSOP_UID", roi.sop_uid)
                _sub(r, "inclusion", "TRUE" if roi.inclusion else "FALSE")
                for x, y in roi.xy:
                    _point(r, "edgeMap", x, y)
        for non in session.non_nodules:
            node = _sub(el, "nonNodule")
            _sub(node, "nonNoduleID", non.non_nodule_id)
            _sub(node, "imageZposition", _z(non.z_mm))
            _sub(node, "imageSOP_UID", non.sop_uid)
            _point(node, "locus", *non.xy)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return tree


def write_lidc_xml(path: Path, header: XmlHeader, sessions: list[XmlSession]) -> Path:
    """Write the reader XML of ``sessions`` to ``path`` (UTF-8, with the XML declaration)."""
    path = Path(path)
    lidc_xml_tree(header, sessions).write(path, encoding="UTF-8", xml_declaration=True)
    return path
