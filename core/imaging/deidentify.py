"""De-identifying DICOM chest X-rays on import from a PACS (issue 18).

DICOM PS3.15 Annex E, Basic Application Confidentiality Profile (113100) with the Retain Patient
Characteristics Option (113108: age, sex; ages over 89 become "090Y"). It is applied as an allow-list:
a new dataset is built from the attributes below only, so any attribute the profile names (names,
IDs, dates, institutions, descriptions, private tags, overlays, curves, sequences of any kind) and any
it forgot is left behind. UIDs are replaced by keyed hashes ("2.25." + 128 bits of HMAC-SHA256), and the
patient and study get pseudonyms from the same key, so importing the same instance again (or another
instance of the same study) maps to the same pseudonym, while nobody without the key can link a
pseudonym back to the PACS.

Pure functions of a pydicom Dataset and the key: nothing is read or written here.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from dataclasses import dataclass

from core.errors import UserError
from core.imaging.dicom_sr import SourceImage

DEIDENTIFICATION_METHOD = "PS3.15 Basic Profile, Retain Patient Characteristics"  # LO: <= 64
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113108", "Retain Patient Characteristics Option"),
)
FRONTAL_VIEWS = ("PA", "AP")
IMAGE_MODALITIES = ("CR", "DX")
# Storage SOP classes of projection radiographs (CR, DX for presentation / processing, and Secondary
# Capture, which some PACS use for digitised films).
XRAY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}

# Attributes that carry no identity and are needed to show, predict on and sort the image.
_KEPT = (
    # SOP common / general series and image (identity-free parts)
    "SOPClassUID", "Modality", "ImageType", "InstanceNumber", "PatientOrientation", "Laterality",
    "ImageLaterality", "BodyPartExamined", "ViewPosition", "PresentationIntentType", "Manufacturer",
    "SpecificCharacterSet", "ConversionType", "LossyImageCompression", "LossyImageCompressionRatio",
    "LossyImageCompressionMethod", "BurnedInAnnotation", "RecognizableVisualFeatures",
    # patient characteristics (Retain Patient Characteristics Option)
    "PatientSex", "PatientAge",
    # image pixel module and what reads it
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames", "PixelAspectRatio",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelSpacing", "ImagerPixelSpacing",
    "PixelIntensityRelationship", "PixelIntensityRelationshipSign", "RescaleIntercept", "RescaleSlope",
    "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction", "PixelPaddingValue",
    "PixelData",
)  # fmt: skip


class InstanceRefused(UserError):
    """An instance the import leaves out, with the one sentence saying why."""


@dataclass(frozen=True)
class Deidentified:
    """A de-identified instance: its file bytes and the pseudonyms it was given."""

    data: bytes
    patient_pseudonym: str  # 16 hex digits
    study_uid: str  # the pseudonymous Study Instance UID
    sop_uid: str  # the pseudonymous SOP Instance UID
    view_position: str
    patient_sex: str
    patient_age: str


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of `value` in the name space `kind` (hex): the same input, the same pseudonym."""
    if len(key) < 16:
        raise ValueError("The pseudonym key must be at least 16 bytes.")
    return hmac.new(key, f"{kind}\x00{value.strip()}".encode(), hashlib.sha256).hexdigest()


def pseudonymous_uid(key: bytes, uid: str) -> str:
    """A UID under the 2.25 arc (UUID-derived, PS3.5 B.2) from the keyed hash of `uid`: at most 44 chars."""
    return "2.25." + str(int(keyed_hash(key, "uid", uid)[:32], 16))


def patient_pseudonym(key: bytes, patient_id: str, issuer: str = "") -> str:
    return keyed_hash(key, "patient", f"{issuer}\x00{patient_id}")[:16]


def source_reference(ds) -> SourceImage:
    """Where an instance lies in the PACS: the UIDs write-back needs (never stored in the clear)."""
    try:
        return SourceImage(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        )
    except (AttributeError, KeyError):
        raise InstanceRefused("The instance lacks its study, series or instance UID.") from None


def refusal(ds) -> str | None:
    """Why an instance is not a single-frame frontal chest X-ray this app may import, or None."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "")).upper()
    if sop_class not in XRAY_SOP_CLASSES:
        return f"It is not a radiograph (SOP class {sop_class or 'missing'}, modality {modality or 'none'})."
    if "PixelData" not in ds:
        return "It holds no pixel data."
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return f"It is a multi-frame image ({int(ds.NumberOfFrames)} frames), not a single radiograph."
    view = str(ds.get("ViewPosition", "")).strip().upper()
    if view not in FRONTAL_VIEWS:
        return f"Its view position is {view or 'not given'}, not a frontal (PA or AP) chest view."
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "It has burned-in annotation, which may show identifying text in the pixels."
    return None


def _retained_age(age: str) -> str:
    """Ages over 89 are grouped (HIPAA Safe Harbor); anything unreadable is dropped."""
    age = age.strip().upper()
    if len(age) != 4 or not age[:3].isdigit() or age[3] not in "DWMY":
        return ""
    if age[3] == "Y" and int(age[:3]) > 89:
        return "090Y"
    return age


def deidentify(ds, key: bytes) -> Deidentified:
    """The de-identified copy of a frontal CR/DX instance (see the module docstring).

    Raises InstanceRefused (one sentence) for anything `refusal` names or that cannot be written back.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    reason = refusal(ds)
    if reason:
        raise InstanceRefused(reason)
    source = source_reference(ds)
    clean = Dataset()
    for keyword in _KEPT:
        if keyword in ds:
            clean[keyword] = ds[keyword]
    age = _retained_age(str(ds.get("PatientAge", "")))
    if age:
        clean.PatientAge = age
    elif "PatientAge" in clean:
        del clean.PatientAge
    sex = str(ds.get("PatientSex", "")).strip().upper()
    clean.PatientSex = sex if sex in ("M", "F", "O") else ""
    pseudonym = patient_pseudonym(key, str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "")))
    clean.PatientName = f"ANON^{pseudonym}"
    clean.PatientID = pseudonym
    clean.PatientBirthDate = ""
    clean.StudyInstanceUID = pseudonymous_uid(key, source.study_uid)
    clean.SeriesInstanceUID = pseudonymous_uid(key, source.series_uid)
    clean.SOPInstanceUID = pseudonymous_uid(key, source.sop_uid)
    clean.StudyID = ""
    clean.AccessionNumber = ""
    clean.StudyDate = ""
    clean.StudyTime = ""
    clean.ReferringPhysicianName = ""
    clean.PatientIdentityRemoved = "YES"
    clean.DeidentificationMethod = DEIDENTIFICATION_METHOD
    codes = []
    for value, meaning in _METHOD_CODES:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    clean.DeidentificationMethodCodeSequence = codes
    clean.LongitudinalTemporalInformationModified = "REMOVED"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = clean.SOPClassUID
    meta.MediaStorageSOPInstanceUID = clean.SOPInstanceUID
    source_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    # Compressed pixel data stays as it is (re-encoding could lose or alter pixels).
    meta.TransferSyntaxUID = source_syntax if source_syntax is not None else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    clean.file_meta = meta
    buffer = io.BytesIO()
    try:
        clean.save_as(buffer, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - a value pydicom cannot encode: a damaged instance
        raise InstanceRefused(
            "The instance is damaged: its de-identified copy could not be written."
        ) from None
    return Deidentified(
        data=buffer.getvalue(),
        patient_pseudonym=pseudonym,
        study_uid=clean.StudyInstanceUID,
        sop_uid=clean.SOPInstanceUID,
        view_position=str(clean.ViewPosition).strip().upper(),
        patient_sex=clean.PatientSex,
        patient_age=age,
    )


def seal(key: bytes, nonce: str, plaintext: str) -> str:
    """Encrypt a short text (a source UID list) under `key`, bound to `nonce` (a pseudonym, used once):
    HMAC-SHA256 in counter mode as the key stream, and a tag over the result. Hex."""
    data = plaintext.encode()
    stream = _key_stream(key, nonce, len(data))
    body = bytes(a ^ b for a, b in zip(data, stream, strict=True))
    tag = hmac.new(key, b"tag\x00" + nonce.encode() + b"\x00" + body, hashlib.sha256).digest()[:16]
    return (tag + body).hex()


def unseal(key: bytes, nonce: str, sealed: str) -> str:
    raw = bytes.fromhex(sealed)
    tag, body = raw[:16], raw[16:]
    expected = hmac.new(key, b"tag\x00" + nonce.encode() + b"\x00" + body, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(tag, expected):
        raise ValueError("The sealed reference does not match this key.")
    stream = _key_stream(key, nonce, len(body))
    return bytes(a ^ b for a, b in zip(body, stream, strict=True)).decode()


def _key_stream(key: bytes, nonce: str, length: int) -> bytes:
    blocks = []
    for counter in range(-(-length // 32)):
        blocks.append(hmac.new(key, f"stream\x00{nonce}\x00{counter}".encode(), hashlib.sha256).digest())
    return b"".join(blocks)[:length]
