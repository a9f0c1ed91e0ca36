"""A PACS over DICOMweb (issue 18): a thin wrapper over dicomweb-client for QIDO-RS search, WADO-RS fetch
and STOW-RS store, whose every failure is a `PacsError` of one plain sentence (the PACS is down, the
credentials are wrong, it timed out, it failed inside, the transfer broke off).

Nothing identifying is logged: dicomweb-client's own logger (which names UIDs in its messages) is kept
at warnings and urllib3's request log (URLs with UIDs) off, and the sentences name the PACS by host and
port only, never a path, query or secret. Study search is QIDO-RS through the same session by hand
(dicomweb-client percent-encodes the wildcard `*`, which servers then match literally).
"""

from __future__ import annotations

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
_TAGS = {  # keyword -> tag, for reading QIDO's DICOM JSON
    "StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
    "SOPClassUID": "00080016", "Modality": "00080060", "NumberOfFrames": "00280008",
}  # fmt: skip


class PacsError(UserError):
    """The PACS could not be used; one sentence saying why."""


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
        import requests

        where = self.settings.where
        try:
            return action(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            raise PacsError(self._http_sentence(exc.response, doing)) from None
        except requests.exceptions.Timeout:
            raise PacsError(
                f"The PACS at {where} did not answer within {self.settings.timeout_s:g} seconds "
                f"while {doing}."
            ) from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise PacsError(
                f"The transfer from the PACS at {where} broke off while {doing}; try again."
            ) from None
        except requests.exceptions.ConnectionError:
            raise PacsError(
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

    # WADO-RS ------------------------------------------------------------------------------------------
    def fetch(self, ref: InstanceRef):
        """The instance as a pydicom Dataset. InstanceRefused when it is damaged, or gone since the
        search (HTTP 404 for one instance: the search itself already proved the address right)."""
        import requests

        def retrieve():
            try:
                return self._client.retrieve_instance(ref.study_uid, ref.series_uid, ref.sop_uid)
            except requests.exceptions.HTTPError as exc:
                if getattr(exc.response, "status_code", 0) == 404:
                    gone = "The PACS no longer holds this instance (it was deleted after the search)."
                    raise InstanceRefused(gone) from None
                raise

        try:
            return self._call("fetching an instance", retrieve)
        except (PacsError, InstanceRefused):
            raise
        except Exception:  # noqa: BLE001 - dicomweb-client parses each part with pydicom: a bad file
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
    try:
        frames = int(_value(row, "NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1
    sop_class, modality = str(_value(row, "SOPClassUID") or ""), str(_value(row, "Modality") or "")
    return InstanceRef(uids[0], uids[1], uids[2], sop_class, modality, frames)


def count_studies(refs: Iterable[InstanceRef]) -> int:
    return len({ref.study_uid for ref in refs})
