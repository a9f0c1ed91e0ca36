"""Predict from the PACS (issue 18): a reader looks at one image of a study, found by its accession number or
Study Instance UID, without importing it.

`find_study` asks the PACS (jobs.dicomweb, QIDO-RS) for the study's instances and lists the single-frame
frontal CR/DX radiographs by what carries no identity (series and instance number, view position,
modality), frontal PA/AP first; what it leaves out is counted in a sentence. `look_at` fetches one
(WADO-RS) and de-identifies it exactly as the import does (core.imaging.deidentify), before anything
reads it. A look keeps nothing: no database row, no file; its pseudonyms come from a key made for that one
look, so they link to nothing.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass

from core.errors import UserError
from core.imaging.deidentify import FRONTAL_VIEWS, IMAGE_MODALITIES, XRAY_SOP_CLASSES, deidentify
from jobs.dicomweb import InstanceRef, PacsClient

MAX_KEY_LENGTH = 64  # a UID's longest; an accession number (SH) is at most 16
_NOT_TYPED = set("*?\\,")  # QIDO wildcards, the DICOM value separator, the list separator


class LookupRefused(UserError):
    """Nothing to predict on in what was asked for (one sentence)."""


@dataclass(frozen=True)
class StudyImage:
    """One image of a found study, as the page lists it (the UIDs in `ref` are never shown)."""

    ref: InstanceRef
    series_number: str
    instance_number: str
    view: str  # "" where the PACS does not say (the fetch then checks it)
    modality: str

    @property
    def frontal(self) -> bool:
        return self.view in FRONTAL_VIEWS

    @property
    def label(self) -> str:
        where = f"Series {self.series_number or '?'}, image {self.instance_number or '?'}"
        return f"{where}: {self.view or 'view not given'}, {self.modality}"


@dataclass(frozen=True)
class FoundStudy:
    images: tuple[StudyImage, ...]  # never empty; frontal first
    left_out: str  # what is not listed, as a sentence ("" when everything is)


def checked_key(text: str) -> str:
    """The typed accession number or Study UID, or LookupRefused: matching is exact, never a pattern."""
    text = text.strip()
    if not text:
        raise LookupRefused("Type an accession number or a Study Instance UID.")
    if len(text) > MAX_KEY_LENGTH or any(c in _NOT_TYPED or not c.isprintable() for c in text):
        raise LookupRefused(
            "An accession number or Study Instance UID is at most 64 characters, without wildcards "
            "(* ?), commas or backslashes."
        )
    return text


def _why_left_out(image: StudyImage) -> str | None:
    """What the image is, as a counted phrase ("{s}" marks the plural), when it is not listed."""
    ref = image.ref
    if ref.sop_class_uid and ref.sop_class_uid not in XRAY_SOP_CLASSES:
        return "non-image instance{s} (a report, presentation state or other object)"
    if ref.modality and ref.modality.upper() not in IMAGE_MODALITIES:
        return f"{ref.modality} instance" + "{s}, not a radiograph"
    if ref.frames > 1:
        return "multi-frame image{s}"
    if image.view and not image.frontal:
        return "lateral or other non-frontal view{s} (" + image.view + ")"
    return None


def _sort_key(image: StudyImage) -> tuple:
    def number(text: str) -> int:
        return int(text) if text.isdigit() else 1 << 30

    return (not image.frontal, number(image.series_number), number(image.instance_number))


def _counted(reasons: Counter) -> str:
    phrases = sorted(reasons.items())
    return ", ".join(f"{n} {what.replace('{s}', '' if n == 1 else 's')}" for what, n in phrases)


def find_study(client: PacsClient, text: str) -> FoundStudy:
    """The single-frame frontal radiographs of the one study with this accession number or Study UID.

    LookupRefused when there is no such study, several share the accession number, or none of its
    images can be predicted on; PacsError when the PACS cannot be asked.
    """
    found = client.find_study(checked_key(text))
    if not found:
        raise LookupRefused(
            f"The PACS at {client.settings.where} has no study with this accession number or Study UID."
        )
    n_studies = len({ref.study_uid for ref, _ in found})
    if n_studies > 1:
        raise LookupRefused(
            f"{n_studies} studies have this accession number; type the Study Instance UID of the one to use."
        )
    images, reasons = [], Counter()
    for ref, attributes in found:
        image = StudyImage(
            ref, attributes.get("SeriesNumber", ""), attributes.get("InstanceNumber", ""),
            attributes.get("ViewPosition", "").strip().upper(), ref.modality[:16] or "modality not given",
        )  # fmt: skip
        why = _why_left_out(image)
        if why is None:
            images.append(image)
        else:
            reasons[why] += 1
    if not images:
        raise LookupRefused(
            f"This study holds no single-frame frontal (PA or AP) chest radiograph to predict on: "
            f"{_counted(reasons)}."
        )
    left_out = f"Not listed: {_counted(reasons)}." if reasons else ""
    return FoundStudy(tuple(sorted(images, key=_sort_key)), left_out)


def look_at(client: PacsClient, image: StudyImage) -> bytes:
    """The image's de-identified DICOM file, fetched now and kept by nobody here.

    InstanceRefused (one sentence: not frontal, multi-frame, burned-in annotation, damaged, gone) or
    PacsError. The original dataset is dropped on return: only the de-identified bytes leave.
    """
    return deidentify(client.fetch(image.ref), secrets.token_bytes(32)).data
