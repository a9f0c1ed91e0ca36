"""A PACS over DICOMweb (issue 18): a thin wrapper over dicomweb-client for QIDO-RS search, WADO-RS fetch
and STOW-RS store, whose every failure is a `PacsError` of one plain sentence (the PACS is down, the
credentials are wrong, it timed out, it failed inside, the transfer broke off).

Nothing identifying is logged: dicomweb-client's own logger (which names UIDs in its messages) is kept
at warnings and urllib3's request log (URLs with UIDs) off, and the sentences name the PACS by host and
port only, never a path, query or secret. Study search is QIDO-RS through the same session by hand
(dicomweb-client percent-encodes the wildcard `*`, which servers then match literally).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from core.errors import UserError
from core.imaging.deidentify import IMAGE_MODALITIES, InstanceRefused

logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
# urllib3 logs every request's URL (which names study, series and instance UIDs) at debug level.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

AUTH_KINDS = ("none", "basic", "bearer")
DEFAULT_TIMEOUT_S = 20.0
# No instance is downloaded past this (a 50-megapixel 16-bit radiograph is 100 MB; a file over 512 MB is
# a cine loop, a volume or an attack): refused by the size its search row says, the Content-Length of the
# answer, or the bytes counted while it arrives.
MAX_INSTANCE_BYTES = 512 * 2**20
_TAGS = {  # keyword -> tag, for reading QIDO's DICOM JSON
    "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016", "Modality": "00080060", "NumberOfFrames": "00280008",
    "Rows": "00280010", "Columns": "00280011", "BitsAllocated": "00280100", "SamplesPerPixel": "00280002",
}  # fmt: skip
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'  # as stored, no transcoding


class PacsError(UserError):
    """The PACS could not be used; one sentence saying why."""


class PacsTransientError(PacsError):
    """A failure that may pass if the request is made again: no answer in time, a connection refused,
    reset or broken off, HTTP 429 or 5xx (the import retries an instance's fetch on it)."""


@dataclass(frozen=True)
class PacsSettings:
    """How to reach a PACS. `secret` is the password (basic) or the token (bearer)."""

    base_url: str
    auth: str = "none"
    username: str = ""
    secret: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("The PACS address must be an http:// or https:// URL with a host name.")
        if parts.username or parts.password:
            raise PacsError("Put the PACS user name and password in their own fields, not in the address.")
        if self.auth not in AUTH_KINDS:
            raise PacsError(f"The PACS authentication must be one of {', '.join(AUTH_KINDS)}.")
        if self.auth == "basic" and not self.username:
            raise PacsError("Basic authentication needs a user name.")
        if self.auth != "none" and not self.secret:
            raise PacsError("This authentication needs a password or token.")

    @property
    def where(self) -> str:
        """host:port, for sentences (no path, no credentials)."""
        parts = urlsplit(self.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"


@dataclass(frozen=True)
class InstanceRef:
    """One instance a QIDO search found."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    frames: int = 1
    rows: int | None = None  # as the search reports them (None: not said)
    columns: int | None = None
    bits_allocated: int | None = None
    samples_per_pixel: int | None = None

    @property
    def pixels(self) -> int | None:
        """Rows x Columns x frames, when the search said the size."""
        return self.rows * self.columns * self.frames if self.rows and self.columns else None

    @property
    def estimated_bytes(self) -> int | None:
        """The pixel data's size from the search's row (uncompressed), when it said the size."""
        pixels = self.pixels
        if pixels is None:
            return None
        return pixels * (self.samples_per_pixel or 1) * max(self.bits_allocated or 8, 8) // 8


@dataclass(frozen=True)
class SearchCriteria:
    """What to import: study dates (YYYYMMDD, inclusive, either may be empty), modalities, and a study
    description pattern (QIDO wildcards * and ?; empty: any)."""

    date_from: str = ""
    date_to: str = ""
    modalities: tuple[str, ...] = IMAGE_MODALITIES
    description: str = ""

    def __post_init__(self) -> None:
        for value in (self.date_from, self.date_to):
            if value and not (len(value) == 8 and value.isdigit()):
                raise PacsError("Study dates must be written YYYYMMDD.")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise PacsError("The first study date is after the last one.")
        unknown = sorted(set(self.modalities) - set(IMAGE_MODALITIES))
        if unknown or not self.modalities:
            raise PacsError(
                f"Only chest radiographs (modality {' or '.join(IMAGE_MODALITIES)}) can be imported."
            )

    def study_filters(self) -> dict[str, str]:
        found = {"ModalitiesInStudy": ",".join(self.modalities)}  # QIDO-RS: a comma between values
        if self.date_from or self.date_to:
            found["StudyDate"] = f"{self.date_from}-{self.date_to}"
        if self.description:
            found["StudyDescription"] = self.description
        return found


class PacsClient:
    def __init__(self, settings: PacsSettings) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        self._session = session = requests.Session()
        headers: dict[str, str] = {}
        if settings.auth == "basic":
            session.auth = (settings.username, settings.secret)
        elif settings.auth == "bearer":
            headers["Authorization"] = f"Bearer {settings.secret}"
            session.headers["Authorization"] = headers["Authorization"]
        self._client = DICOMwebClient(
            settings.base_url.rstrip("/"), session=session, headers=headers, timeout=settings.timeout_s
        )
        # One quick retry of a busy answer (429/503/504), not dicomweb-client's five with backoff.
        self._client.set_http_retry_params(retry=True, max_attempts=2, wait_exponential_multiplier=200)

    # failures -----------------------------------------------------------------------------------------
    def _call(self, doing: str, action, *args: Any, **kwargs: Any) -> Any:
        """`action(...)`, its failures turned into one sentence: PacsTransientError for those that may
        pass (timeouts, connections refused, reset or broken off, HTTP 429 and 5xx), PacsError else."""
        import requests

        where = self.settings.where
        timed_out = (
            f"The PACS at {where} did not answer within {self.settings.timeout_s:g} seconds while {doing}."
        )
        try:
            return action(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            status = getattr(exc.response, "status_code", 0)
            error = PacsTransientError if status == 429 or status >= 500 else PacsError
            raise error(self._http_sentence(exc.response, doing)) from None
        except requests.exceptions.Timeout:
            raise PacsTransientError(timed_out) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise PacsTransientError(
                f"The transfer from the PACS at {where} broke off while {doing}; try again."
            ) from None
        except requests.exceptions.SSLError as exc:  # before ConnectionError, its base class
            raise PacsError(_tls_sentence(where, exc)) from None
        except requests.exceptions.ConnectionError as exc:
            if _caused_by(exc, "ReadTimeoutError"):  # a body that stalls: requests says ConnectionError
                raise PacsTransientError(timed_out) from None
            raise PacsTransientError(
                f"The PACS at {where} cannot be reached; check that it is running and that the "
                "address is right."
            ) from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(
                f"The PACS at {where} could not be used while {doing} ({type(exc).__name__})."
            ) from None

    def _http_sentence(self, response: Any, doing: str) -> str:
        where = self.settings.where
        status = getattr(response, "status_code", 0)
        if status in (401, 403):
            what = "token" if self.settings.auth == "bearer" else "user name or password"
            if self.settings.auth == "none":
                return f"The PACS at {where} asks for credentials; add them to the connection."
            return f"The PACS at {where} refused the {what}; check the connection's credentials."
        if status == 404:
            return f"The PACS at {where} has no DICOMweb service or no such item at this address (HTTP 404)."
        if status == 429:
            return f"The PACS at {where} is too busy to answer (HTTP 429) while {doing}; try again later."
        if status >= 500:
            return (
                f"The PACS at {where} failed with an internal error (HTTP {status}) while {doing}; "
                "try again later."
            )
        return f"The PACS at {where} refused the request (HTTP {status}) while {doing}."

    # QIDO-RS ------------------------------------------------------------------------------------------
    def search_studies(self, criteria: SearchCriteria) -> list[str]:
        """The Study Instance UIDs of the matching studies, sorted.

        QIDO-RS by hand, through the client's session: dicomweb-client percent-encodes the wildcard `*`,
        which Orthanc (and other servers) then match literally.
        """
        from urllib.parse import urlencode

        query = urlencode({**criteria.study_filters(), "includefield": "StudyInstanceUID"}, safe="*?,")
        url = f"{self.settings.base_url.rstrip('/')}/studies?{query}"

        def get() -> list[dict]:
            response = self._session.get(
                url, headers={"Accept": "application/dicom+json"}, timeout=self.settings.timeout_s
            )
            response.raise_for_status()
            return response.json() if response.content else []

        rows = self._call("searching for studies", get)
        uids = {_value(row, "StudyInstanceUID") for row in rows}
        return sorted(uid for uid in uids if isinstance(uid, str) and uid)

    def search_instances(self, criteria: SearchCriteria) -> list[InstanceRef]:
        """Every instance of the matching studies (whatever its modality), in a stable order."""
        found: dict[str, InstanceRef] = {}
        for study_uid in self.search_studies(criteria):
            rows = self._call(
                "searching for instances",
                self._client.search_for_instances,
                study_instance_uid=study_uid,
                fields=list(_TAGS),
                get_remaining=True,
            )
            for row in rows:
                ref = _instance_ref(row)
                if ref is not None:  # other modalities too: the import lists them with why
                    found[ref.sop_uid] = ref
        return sorted(found.values(), key=lambda r: (r.study_uid, r.series_uid, r.sop_uid))

    def study_attributes(self, study_uid: str) -> dict[str, Any]:
        """The patient and study attributes the PACS holds for a study (for results filed with it)."""
        from pydicom.dataset import Dataset

        from core.imaging.dicom_sr import STUDY_ATTRIBUTES

        rows = self._call(
            "looking up a study",
            self._client.search_for_studies,
            search_filters={"StudyInstanceUID": study_uid},
            fields=list(STUDY_ATTRIBUTES),
        )
        if not rows:
            raise PacsError(
                f"The PACS at {self.settings.where} no longer holds the study to write results to."
            )
        ds = Dataset.from_json(rows[0])
        return {keyword: ds.get(keyword) for keyword in STUDY_ATTRIBUTES if keyword in ds}

    def find_study(self, accession_or_uid: str) -> list[tuple[InstanceRef, dict[str, str]]]:
        """Every instance of the studies with this Accession Number (or this Study Instance UID, when the
        text looks like a UID), each with what a reader picks an image by and nothing identifying:
        "SeriesNumber", "InstanceNumber" and "ViewPosition" as text ("" where the PACS does not say).

        Exact matching only: a text with a QIDO wildcard or a separator is a ValueError, so a look-up never
        lists other patients' studies."""
        text = accession_or_uid.strip()
        if not text or any(c in "*?\\," for c in text):
            raise ValueError("find_study matches one accession number or Study Instance UID exactly.")
        parts = text.split(".")
        keys = ["AccessionNumber"]
        if len(parts) > 1 and all(p.isdigit() for p in parts):  # a UID (an accession may look like one)
            keys.insert(0, "StudyInstanceUID")
        study_uids: list[str] = []
        for key in keys:
            rows = self._call(
                "looking up a study", self._client.search_for_studies, search_filters={key: text},
                fields=["StudyInstanceUID"],
            )  # fmt: skip
            found_uids = (_value(row, "StudyInstanceUID") for row in rows)
            study_uids = sorted({uid for uid in found_uids if isinstance(uid, str) and uid})
            if study_uids:
                break
        shown = {"SeriesNumber": "00200011", "InstanceNumber": "00200013", "ViewPosition": "00185101"}
        found = []
        for study_uid in study_uids:
            rows = self._call(
                "searching for instances", self._client.search_for_instances, study_instance_uid=study_uid,
                fields=[*_TAGS, *shown], get_remaining=True,
            )  # fmt: skip
            for row in rows:
                ref = _instance_ref(row)
                if ref is not None:
                    values = {k: (row.get(tag) or {}).get("Value") or [""] for k, tag in shown.items()}
                    found.append((ref, {k: str(v[0]).strip()[:16] for k, v in values.items()}))
        return sorted(found, key=lambda item: (item[0].series_uid, item[0].sop_uid))

    # WADO-RS ------------------------------------------------------------------------------------------
    def fetch(self, ref: InstanceRef, *, max_bytes: int = MAX_INSTANCE_BYTES):
        """The instance as a pydicom Dataset (WADO-RS, in its stored transfer syntax). InstanceRefused
        when it is damaged, larger than `max_bytes` (refused by the answer's Content-Length, or once that
        many bytes arrived: never downloaded whole), or gone since the search (HTTP 404 for one instance:
        the search itself already proved the address right). PacsTransientError: try again."""
        from urllib.parse import quote

        import pydicom

        path = "/".join(
            f"{level}/{quote(uid, safe='')}"
            for level, uid in (("studies", ref.study_uid), ("series", ref.series_uid),
                               ("instances", ref.sop_uid))
        )  # fmt: skip
        url = f"{self.settings.base_url.rstrip('/')}/{path}"

        def retrieve() -> tuple[str, bytes]:
            with self._session.get(
                url, headers={"Accept": _WADO_ACCEPT}, stream=True, timeout=self.settings.timeout_s
            ) as response:
                if response.status_code == 404:
                    gone = "The PACS no longer holds this instance (it was deleted after the search)."
                    raise InstanceRefused(gone)
                response.raise_for_status()
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise InstanceRefused(_too_large(int(declared), max_bytes))
                body = bytearray()
                for chunk in response.iter_content(chunk_size=1 << 20):
                    body += chunk
                    if len(body) > max_bytes:
                        raise InstanceRefused(_too_large(len(body), max_bytes))
                return response.headers.get("Content-Type", ""), bytes(body)

        content_type, body = self._call("fetching an instance", retrieve)
        part = _single_part(content_type, body)
        if part is None:  # the closing boundary never came: the answer was cut short
            raise PacsTransientError(
                f"The transfer from the PACS at {self.settings.where} broke off while fetching an instance; "
                "try again."
            )
        try:
            return pydicom.dcmread(io.BytesIO(part))
        except Exception:  # noqa: BLE001 - whatever pydicom raises for a file that is not DICOM
            raise InstanceRefused("The PACS sent this instance damaged; it is not valid DICOM.") from None

    # STOW-RS ------------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Any], study_uid: str | None = None) -> None:
        """Store datasets; every one must be accepted (a partial refusal is an error)."""
        for ds in datasets:  # dicomweb-client writes each as it is: without a preamble, no Part 10 file
            if not getattr(ds, "preamble", None):
                ds.preamble = b"\0" * 128
        answer = self._call(
            "storing results", self._client.store_instances, list(datasets), study_instance_uid=study_uid
        )
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            raise PacsError(
                f"The PACS at {self.settings.where} refused {len(failed)} of {len(datasets)} "
                "result instances."
            )

    def check(self) -> None:
        """Raise PacsError unless the PACS answers a QIDO search with these credentials."""
        self._call("testing the connection", self._client.search_for_studies, limit=1)


def _value(row: dict, keyword: str) -> Any:
    values = (row.get(_TAGS[keyword]) or {}).get("Value") or []
    return values[0] if values else None


def _instance_ref(row: dict) -> InstanceRef | None:
    uids = [_value(row, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(isinstance(uid, str) and uid for uid in uids):
        return None
    sop_class, modality = str(_value(row, "SOPClassUID") or ""), str(_value(row, "Modality") or "")
    sizes = [_count(row, k) for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel")]
    return InstanceRef(
        uids[0], uids[1], uids[2], sop_class, modality, _count(row, "NumberOfFrames") or 1, *sizes
    )


def _count(row: dict, keyword: str) -> int | None:
    """A positive whole number from the search's row, or None (absent or not a number)."""
    try:
        value = int(_value(row, keyword))
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _too_large(size: int, limit: int) -> str:
    return (
        f"The instance is larger than {limit / 2**20:,.0f} MB (at least {size / 2**20:,.0f} MB); it is not "
        "downloaded."
    )


def _single_part(content_type: str, body: bytes) -> bytes | None:
    """The first part of a WADO-RS multipart/related answer (the whole body for a bare application/dicom
    one, which some servers send); None when the closing boundary is missing (a body cut short)."""
    media_type, *parameters = (item.strip() for item in content_type.split(";"))
    boundary = ""
    for name, _, value in (parameter.partition("=") for parameter in parameters):
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    if media_type.lower() != "multipart/related" or not boundary:
        return body
    marker = b"--" + boundary.encode()
    start = body.find(marker)
    if start < 0:
        return None
    headers_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + marker, headers_end + 4) if headers_end >= 0 else -1
    if end < 0:
        return None
    return body[headers_end + 4 : end]


def _caused_by(exc: BaseException, name: str) -> bool:
    """Whether an exception named `name` is among `exc`'s arguments, reasons and causes (requests wraps
    urllib3's exceptions, which wrap the socket's or ssl's)."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if any(klass.__name__ == name for klass in type(current).__mro__):
            return True
        linked = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        stack += [item for item in linked if isinstance(item, BaseException)]
    return False


def _tls_sentence(where: str, exc: BaseException) -> str:
    if _caused_by(exc, "SSLCertVerificationError") or "CERTIFICATE_VERIFY_FAILED" in str(exc):
        return (
            f"The PACS at {where} presented a certificate this machine does not trust (self-signed, from an "
            "unknown authority, expired or for another host name); install its certificate authority on "
            "this machine or correct the address."
        )
    return (
        f"A secure (TLS) connection to the PACS at {where} could not be set up; check that the PACS "
        "speaks https at this address."
    )


def count_studies(refs: Iterable[InstanceRef]) -> int:
    return len({ref.study_uid for ref in refs})
