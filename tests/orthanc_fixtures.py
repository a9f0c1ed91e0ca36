"""A real PACS for the tests (a pytest plugin, registered in tests/conftest.py): Debian's Orthanc with its
DICOMweb plugin, started once per test session (per xdist worker) on 127.0.0.1 with a throw-away JSON
config, free HTTP and DICOM ports, its own storage folder and HTTP authentication on (user
`ORTHANC_USER`), so wrong credentials meet a real 401. Never a mock.

- `orthanc_server`: the running server (session scope).
- `orthanc`: the same server emptied before the test.
- `running_orthanc(folder)`: another one, for a test that stops and restarts its PACS.
- `dicom_from_png`, `store_sample_studies`: NIH sample PNGs made into CR/DX instances carrying planted
  identities (`PLANTED_*`: names, IDs, institution, accession numbers) and stored with STOW-RS.

When Orthanc is not installed (scripts/system-deps.sh installs `orthanc` and `orthanc-dicomweb`) the
tests that need it fail if $CI is set and are skipped otherwise, like the PostgreSQL ones.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image as PILImage
from sqlalchemy import Engine, MetaData, select

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
ORTHANC_USER = "pacs-tester"
ORTHANC_PASSWORD = "orthanc-test-password-7"
# What the tests plant in the source files and later look for everywhere the app writes.
PLANTED_NAME_PREFIX = "Zyxplanted"
PLANTED_ID_PREFIX = "PHI-ID-"
PLANTED_INSTITUTION = "Planted General Hospital Qwv"
PLANTED_ACCESSION_PREFIX = "ACCPLNT"
PLANTED_PHYSICIAN = "Drplanted^Referrer"
PLANTED_BIRTH_DATE = "19470312"
PLANTED_ADDRESS_STREET = "Plantedstreet"
# Each planted identity as the searches look for it (the physician by family name: any PN layout).
PLANTED_IDENTITIES = (
    PLANTED_NAME_PREFIX, PLANTED_ID_PREFIX, PLANTED_INSTITUTION, PLANTED_ACCESSION_PREFIX,
    PLANTED_PHYSICIAN.split("^")[0], PLANTED_ADDRESS_STREET, PLANTED_BIRTH_DATE,
)  # fmt: skip


@dataclass(frozen=True)
class OrthancServer:
    http_url: str
    dicomweb_url: str
    user: str
    password: str
    folder: Path
    process: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def stop(self) -> None:
        """Kill the server now (a PACS going down; Orthanc's orderly stop takes ~2 s, and its storage is
        either thrown away or, started again, recovered as after a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=15)

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(
            method, f"{self.http_url}{path}", auth=(self.user, self.password), timeout=30, **kwargs
        )
        response.raise_for_status()
        return response

    def clear(self) -> None:
        for patient in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{patient}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dicomweb_plugin() -> Path | None:
    for folder in DICOMWEB_PLUGIN_DIRS:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            return candidate
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} CI is set, so the PACS tests must run, not be skipped.", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running_orthanc(folder: Path, port: int | None = None) -> Iterator[OrthancServer]:
    """Orthanc serving (and storing in) `folder` on `port` (a free one when None) until the block ends;
    started again on the same folder and port, it holds what it held."""
    plugin = _dicomweb_plugin()
    if not ORTHANC_BINARY.exists() or plugin is None:
        _unavailable("Orthanc and its DICOMweb plugin are not installed (scripts/system-deps.sh does it).")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    config = {
        "Name": "chexnet-test-pacs",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "DicomPort": _free_port(),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StorageCompression": False,
        "HttpCompressionEnabled": False,
        "SaveJobs": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=2))
    url = f"http://127.0.0.1:{port}"
    with (folder / "orthanc.log").open("a") as log:
        process = subprocess.Popen(
            [str(ORTHANC_BINARY), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        server = OrthancServer(url, f"{url}/dicom-web", ORTHANC_USER, ORTHANC_PASSWORD, folder, process)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    server.rest("GET", "/system")
                    break
                except requests.RequestException:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.flush()
                        tail = (folder / "orthanc.log").read_text().strip().splitlines()[-3:]
                        _unavailable(f"Orthanc did not start: {' / '.join(tail) or 'no output'}.")
                    time.sleep(0.05)
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def orthanc_server() -> Iterator[OrthancServer]:
    folder = Path(tempfile.mkdtemp(prefix="chexnet-orthanc-"))
    try:
        with running_orthanc(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def orthanc(orthanc_server: OrthancServer) -> OrthancServer:
    orthanc_server.clear()
    return orthanc_server


# ------------------------------------------------------------------------------------------------------
# Sample PNGs as DICOM with planted identities


@dataclass(frozen=True)
class PlantedInstance:
    image_index: str
    patient_name: str
    patient_id: str
    accession: str
    study_uid: str
    series_uid: str
    sop_uid: str
    view: str
    modality: str


def dicom_from_png(
    png: Path,
    *,
    number: int,
    view: str,
    modality: str = "CR",
    age: str = "045Y",
    sex: str = "F",
    study_uid: str | None = None,
):
    """A 16-bit (12 stored) MONOCHROME2 CR or DX instance of a sample PNG, full of planted identity:
    (dataset, PlantedInstance)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = np.asarray(PILImage.open(png).convert("L"), dtype=np.uint16) * 16
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if modality == "CR" else "1.2.840.10008.5.1.4.1.1.1.1"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = f"{PLANTED_NAME_PREFIX}{number:03d}^Alice"
    ds.PatientID = f"{PLANTED_ID_PREFIX}{number:05d}"
    ds.OtherPatientIDs = f"{PLANTED_ID_PREFIX}OTHER{number:05d}"
    ds.PatientBirthDate = PLANTED_BIRTH_DATE
    ds.PatientAge = age
    ds.PatientSex = sex
    ds.PatientAddress = f"{number} {PLANTED_ADDRESS_STREET}, Qwvtown"
    ds.InstitutionName = PLANTED_INSTITUTION
    ds.ReferringPhysicianName = PLANTED_PHYSICIAN
    ds.AccessionNumber = f"{PLANTED_ACCESSION_PREFIX}{number:05d}"
    ds.StudyID = f"S{number:05d}"
    ds.StudyDate = "20261101"
    ds.StudyTime = "101500"
    ds.StudyDescription = f"CHEST for {PLANTED_NAME_PREFIX}{number:03d}"
    ds.SeriesDescription = f"Chest {view} {PLANTED_INSTITUTION}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ImageComments = f"Patient {PLANTED_NAME_PREFIX}{number:03d} seen by {PLANTED_PHYSICIAN}"
    ds.add_new(0x00090010, "LO", "PLANTED PRIVATE")
    ds.add_new(0x00091001, "LO", f"{PLANTED_ID_PREFIX}PRIVATE{number:05d}")
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = grey.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    planted = PlantedInstance(
        png.name, str(ds.PatientName), ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID,
        ds.SeriesInstanceUID, ds.SOPInstanceUID, view, modality,
    )  # fmt: skip
    return ds, planted


def sample_views(sample_dir: Path) -> dict[str, str]:
    with (sample_dir / "Data_Entry_2017_v2020.csv").open(newline="") as handle:
        names = {p.name for p in (sample_dir / "images").glob("*.png")}
        return {
            row["Image Index"]: row["View Position"]
            for row in csv.DictReader(handle)
            if row["Image Index"] in names
        }


def store_sample_studies(
    server: OrthancServer, sample_dir: Path, n: int, *, start: int = 0
) -> list[PlantedInstance]:
    """`n` sample PNGs (sorted, from `start`) as one-instance studies, alternately CR and DX, stored in
    Orthanc with STOW-RS through dicomweb-client."""
    views = sample_views(sample_dir)
    pngs = sorted((sample_dir / "images").glob("*.png"))[start : start + n]
    datasets, planted = [], []
    for number, png in enumerate(pngs, start=start):
        ds, info = dicom_from_png(png, number=number, view=views[png.name], modality=("CR", "DX")[number % 2])
        datasets.append(ds)
        planted.append(info)
    stow(server, datasets)
    return planted


def stow(server: OrthancServer, datasets: list) -> None:
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    session.auth = (server.user, server.password)
    client = DICOMwebClient(server.dicomweb_url, session=session)
    for ds in datasets:
        ds.preamble = b"\0" * 128  # a Part 10 file, as modalities send them (dicomweb-client writes as is)
    for start in range(0, len(datasets), 10):
        client.store_instances(datasets[start : start + 10])


# ------------------------------------------------------------------------------------------------------
# Searching for the planted identities wherever the app writes


def search_database(engine: Engine, needles: list[str]) -> list[str]:
    """Every (table, needle) where a planted value appears in any column of any row."""
    metadata = MetaData()
    with warnings.catch_warnings():  # SQLAlchemy cannot reflect the expression index of images
        warnings.simplefilter("ignore")
        metadata.reflect(engine)
    found = []
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            text = "\n".join(repr(tuple(row)) for row in connection.execute(select(table)))
            found += [f"{table.name}: {needle}" for needle in needles if needle.lower() in text.lower()]
    return found


def search_files(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            found += [f"{path.name}: {n}" for n in needles if n.lower().encode() in data]
    return found
