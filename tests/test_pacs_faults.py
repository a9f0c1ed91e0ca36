"""Issue 18's faults, hardened: a certificate the machine does not trust, transient failures of an
instance's fetch (retried with backoff; wrong credentials and 404 are not), and instances too large to
download. Against the real Orthanc (tests/orthanc_fixtures.py), through a real local HTTP proxy that
injects the faults into the WADO-RS answers, and a real HTTPS server with a self-signed certificate
made by openssl for the test."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

from core.imaging.deidentify import InstanceRefused
from db import pacs
from db.engine import session_scope
from db.models import Image, PacsInstance
from jobs.dicomweb import PacsClient, PacsError, PacsSettings, PacsTransientError, SearchCriteria
from jobs.pacs_import import import_instances
from tests.orthanc_fixtures import OrthancServer, dicom_from_png, store_sample_studies, stow

FAST_RETRIES = (0.01, 0.02)  # three attempts, without the real 0.5 s / 1 s waits


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("CHEXNET_HOME", str(home))  # the pseudonym key and the uploads land here
    return home


# ------------------------------------------------------------------------------------------------------
# A real HTTP proxy in front of Orthanc that injects faults into WADO-RS instance answers


Fault = Callable[[int, int], str]  # (instance number in order of first request, attempt) -> fault or ""


def first_attempts(*faults: str) -> Fault:
    """Every instance's first attempts get these faults, the next one the real answer."""
    return lambda number, attempt: faults[attempt] if attempt < len(faults) else ""


class FaultyProxy:
    """Forwards every request to Orthanc, except that a WADO-RS instance request may get a fault
    instead: an HTTP status ("500", "503", "429", "401", "404"), "broken" (cut off half way), "reset"
    (a TCP reset), "stall" (no answer for 1 s), "huge" (600 MB announced, then nothing), "flood"
    (bytes without a Content-Length until the client hangs up)."""

    def __init__(self, server: OrthancServer, fault: Fault = lambda number, attempt: "") -> None:
        self.orthanc, self.fault = server, fault
        self.attempts: Counter[str] = Counter()  # WADO-RS requests per instance path
        self.order: list[str] = []  # instance paths in the order first asked for
        self.flood_sent = 0
        self.strip_sizes = False  # drop Rows/Columns from QIDO answers (a PACS that does not say them)
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                proxy.handle(self)

            def log_message(self, *args) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.handle_error = lambda *args: None  # the client hung up on a stalled or huge answer
        self.where = f"127.0.0.1:{self.http.server_address[1]}"
        self.url = f"http://{self.where}/dicom-web"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.http.shutdown()
        self.http.server_close()

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        is_instance = "/instances/" in request.path and "?" not in request.path
        if is_instance:
            with self._lock:
                if request.path not in self.order:
                    self.order.append(request.path)
                number, attempt = self.order.index(request.path), self.attempts[request.path]
                self.attempts[request.path] += 1
            fault = self.fault(number, attempt)
            if fault:
                return self.inject(request, fault)
        forwarded = requests.get(
            f"{self.orthanc.http_url}{request.path}", timeout=30,
            headers={k: v for k, v in request.headers.items() if k in ("Accept", "Authorization")},
        )  # fmt: skip
        body = forwarded.content
        if self.strip_sizes and not is_instance:
            body = body.replace(b'"00280010"', b'"00281010"').replace(b'"00280011"', b'"00281011"')
        request.send_response(forwarded.status_code)
        request.send_header("Content-Type", forwarded.headers.get("Content-Type", "application/octet-stream"))
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def inject(self, request: http.server.BaseHTTPRequestHandler, fault: str) -> None:
        multipart = 'multipart/related; type="application/dicom"; boundary=b'
        if fault.isdigit():
            request.send_response(int(fault))
            request.send_header("Content-Length", "5")
            request.end_headers()
            request.wfile.write(b"fault")
        elif fault == "broken":  # the headers promise more than comes: the connection closes half way
            request.send_response(200)
            request.send_header("Content-Type", multipart)
            request.send_header("Content-Length", "500000")
            request.end_headers()
            request.wfile.write(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 1000)
        elif fault == "reset":  # a TCP reset instead of an answer
            request.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.connection.close()
            request.close_connection = True
        elif fault == "stall":  # no answer within the client's timeout
            time.sleep(1.0)
        elif fault == "huge":  # 600 MB announced; 64 KB sent, then nothing until the client hangs up
            request.send_response(200)
            request.send_header("Content-Type", multipart)
            request.send_header("Content-Length", str(600 * 2**20))
            request.end_headers()
            request.wfile.write(b"\0" * 65536)
            time.sleep(3)
        elif fault == "flood":  # no Content-Length: bytes until the client hangs up (at most 64 MB)
            request.send_response(200)
            request.send_header("Content-Type", multipart)
            request.end_headers()
            chunk = b"\0" * 65536
            for _ in range(1024):
                request.wfile.write(chunk)
                self.flood_sent += len(chunk)
        else:
            raise ValueError(fault)


def client_of(proxy: FaultyProxy, server: OrthancServer, timeout_s: float = 5) -> PacsClient:
    return PacsClient(PacsSettings(proxy.url, "basic", server.user, server.password, timeout_s=timeout_s))


def connection_to(engine: Engine, server: OrthancServer, url: str) -> int:
    with session_scope(engine) as session:
        return pacs.create_connection(
            session, "Faulty PACS", url, auth="basic", username=server.user, secret=server.password
        ).id


def stored(engine: Engine) -> tuple[int, int]:
    with session_scope(engine, read_only=True) as session:
        return session.query(Image).count(), session.query(PacsInstance).count()


# ------------------------------------------------------------------------------------------------------
# (b) transient failures of a fetch are retried; wrong credentials and 404 are not


@pytest.mark.parametrize(
    "faults",
    [("503", "broken"), ("reset", "429"), ("500", "stall")],
    ids=["5xx-broken", "reset-429", "stall"],
)
def test_transient_fetch_failures_are_retried_and_the_import_completes(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path, faults: tuple[str, str]
) -> None:
    store_sample_studies(orthanc, sample_dir, 2)
    with FaultyProxy(orthanc, first_attempts(*faults)) as proxy:
        connection_id = connection_to(sqlite_engine, orthanc, proxy.url)
        summary = import_instances(
            sqlite_engine, connection_id, SearchCriteria(), client=client_of(proxy, orthanc, timeout_s=0.3),
            retry_delays_s=FAST_RETRIES,
        )  # fmt: skip
    assert (summary.imported, summary.skipped) == (2, 0)
    assert sorted(proxy.attempts.values()) == [3, 3]  # two faults, then the answer, for each instance
    assert stored(sqlite_engine) == (2, 2)


def test_a_fetch_that_keeps_failing_ends_the_import_after_three_attempts_and_it_resumes(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_sample_studies(orthanc, sample_dir, 3)
    broken = {"on": True}
    with FaultyProxy(orthanc, lambda number, attempt: "503" if number == 1 and broken["on"] else "") as proxy:
        connection_id = connection_to(sqlite_engine, orthanc, proxy.url)
        started = time.monotonic()
        with pytest.raises(PacsTransientError) as caught:
            import_instances(sqlite_engine, connection_id, SearchCriteria(), retry_delays_s=(0.2, 0.4))
        waited = time.monotonic() - started
        assert str(caught.value) == (
            f"The PACS at {proxy.where} failed with an internal error (HTTP 503) while fetching an instance; "
            "try again later."
        )
        assert [proxy.attempts[path] for path in proxy.order] == [
            1,
            3,
        ]  # tried three times, then the sentence
        assert 0.6 <= waited < 10  # the two waits between the attempts
        assert stored(sqlite_engine) == (1, 1)  # the one before the fault, complete; nothing half-stored
        broken["on"] = False  # the PACS recovers: running the import again resumes where it stopped
        resumed = import_instances(sqlite_engine, connection_id, SearchCriteria())
    assert (resumed.imported, resumed.already_done) == (2, 1)
    assert stored(sqlite_engine) == (3, 3)


def test_wrong_credentials_and_a_vanished_instance_are_not_retried(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_sample_studies(orthanc, sample_dir, 2)
    with FaultyProxy(orthanc, lambda number, attempt: "404" if number == 0 else "401") as proxy:
        connection_id = connection_to(sqlite_engine, orthanc, proxy.url)
        with pytest.raises(PacsError) as caught:
            import_instances(sqlite_engine, connection_id, SearchCriteria(), retry_delays_s=FAST_RETRIES)
    assert not isinstance(caught.value, PacsTransientError)
    assert str(caught.value) == (
        f"The PACS at {proxy.where} refused the user name or password; check the connection's credentials."
    )
    assert [proxy.attempts[path] for path in proxy.order] == [1, 1]
    with session_scope(sqlite_engine, read_only=True) as session:
        [(_, why)] = pacs.skipped_instances(session, connection_id)
    assert why == "The PACS no longer holds this instance (it was deleted after the search)."


# ------------------------------------------------------------------------------------------------------
# (c) an instance too large is refused before it is downloaded or decoded


def oversized(sample_dir: Path, number: int, rows: int, columns: int, **header) -> tuple:
    """A sample instance whose header declares another size (its pixel data stays small)."""
    png = sorted((sample_dir / "images").glob("*.png"))[number]
    ds, planted = dicom_from_png(png, number=number, view="PA")
    ds.Rows, ds.Columns = rows, columns
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return ds, planted


def test_instances_too_large_by_their_search_row_are_left_out_without_a_download(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    store_sample_studies(orthanc, sample_dir, 1)
    bomb, _ = oversized(sample_dir, 5, 20_000, 20_000)  # 400 megapixels
    heavy, _ = oversized(sample_dir, 7, 7_000, 7_000, SamplesPerPixel=3, BitsAllocated=32)  # 49 MP, 561 MB
    stow(orthanc, [bomb, heavy])
    with FaultyProxy(orthanc) as proxy:
        connection_id = connection_to(sqlite_engine, orthanc, proxy.url)
        summary = import_instances(sqlite_engine, connection_id, SearchCriteria())
    assert (summary.imported, summary.skipped) == (1, 2)
    assert sorted(summary.skip_reasons) == [
        "It is 20000x20000 pixels (400 megapixels), more than the 50-megapixel limit, so it is not "
        "downloaded.",
        "Its pixel data is about 561 MB, more than the 512 MB limit, so it is not downloaded.",
    ]
    assert len(proxy.order) == 1  # only the one imported was fetched
    with session_scope(sqlite_engine, read_only=True) as session:  # recorded as left out, with why
        assert sorted(why for _, why in pacs.skipped_instances(session, connection_id)) == sorted(
            summary.skip_reasons
        )


def test_the_reader_s_bomb_guard_refuses_a_huge_header_the_search_did_not_report(
    sqlite_engine: Engine, orthanc: OrthancServer, sample_dir: Path
) -> None:
    bomb, _ = oversized(sample_dir, 5, 20_000, 20_000)
    stow(orthanc, [bomb])
    with FaultyProxy(orthanc) as proxy:
        proxy.strip_sizes = True  # a PACS whose search does not say Rows and Columns
        connection_id = connection_to(sqlite_engine, orthanc, proxy.url)
        summary = import_instances(sqlite_engine, connection_id, SearchCriteria())
    assert len(proxy.order) == 1 and (summary.imported, summary.skipped) == (0, 1)
    assert summary.skip_reasons == [
        "The image is 20000x20000 pixels (400 megapixels), more than the 50-megapixel limit; it may be a "
        "'decompression bomb'."
    ]
    assert stored(sqlite_engine) == (0, 1)


def test_a_download_larger_than_the_limit_is_refused_before_it_arrives_whole(
    orthanc: OrthancServer, sample_dir: Path
) -> None:
    [planted] = store_sample_studies(orthanc, sample_dir, 1)
    with FaultyProxy(orthanc) as proxy:
        [ref] = client_of(proxy, orthanc).search_instances(SearchCriteria())
        assert (ref.rows, ref.columns, ref.estimated_bytes) == (512, 512, 512 * 512 * 2)
        assert client_of(proxy, orthanc).fetch(ref).SOPInstanceUID == planted.sop_uid  # within the limit
        with pytest.raises(InstanceRefused) as caught:  # by its Content-Length (525 KB), before the body
            client_of(proxy, orthanc).fetch(ref, max_bytes=100_000)
        assert str(caught.value) == "The instance is larger than 0 MB (at least 1 MB); it is not downloaded."

        proxy.fault = lambda number, attempt: "huge"  # 600 MB announced
        started = time.monotonic()
        with pytest.raises(InstanceRefused, match="larger than 512 MB \\(at least 600 MB\\)"):
            client_of(proxy, orthanc).fetch(ref)
        assert time.monotonic() - started < 2  # refused on the header: the 3 s wait for the body never came

        proxy.fault = lambda number, attempt: "flood"  # no Content-Length: counted as it arrives
        with pytest.raises(InstanceRefused, match="larger than 2 MB \\(at least 3 MB\\)"):
            client_of(proxy, orthanc).fetch(ref, max_bytes=2 * 2**20)
    assert proxy.flood_sent < 32 * 2**20  # the client hung up long before the 64 MB were sent


# ------------------------------------------------------------------------------------------------------
# (a) TLS: a certificate this machine does not trust


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed.")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=chexnet-test-pacs",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


class _Empty(http.server.BaseHTTPRequestHandler):
    """A DICOMweb service that holds nothing: every QIDO answer is an empty list."""

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_pacs(self_signed: tuple[Path, Path]) -> Iterator[str]:
    """A real HTTPS server presenting the self-signed certificate; its host:port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Empty)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.handle_error = lambda *args: None  # the refused handshakes
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_untrusted_certificate_is_its_own_sentence_and_is_not_retried(
    https_pacs: str, self_signed: tuple[Path, Path], sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = PacsSettings(f"https://{https_pacs}/dicom-web", timeout_s=5)
    with pytest.raises(PacsError) as caught:
        PacsClient(settings).check()
    assert not isinstance(caught.value, PacsTransientError)
    assert str(caught.value) == (
        f"The PACS at {https_pacs} presented a certificate this machine does not trust (self-signed, from an "
        "unknown authority, expired or for another host name); install its certificate authority on this "
        "machine or correct the address."
    )
    with session_scope(sqlite_engine) as session:
        connection_id = pacs.create_connection(session, "TLS PACS", settings.base_url).id
    with pytest.raises(PacsError, match="does not trust"):  # an import says the same
        import_instances(sqlite_engine, connection_id, SearchCriteria())
    # Trusted (the certificate in requests' CA bundle), the same server answers.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed[0]))
    PacsClient(settings).check()
    assert PacsClient(settings).search_instances(SearchCriteria()) == []


def test_https_to_a_plain_http_service_is_a_tls_sentence(orthanc: OrthancServer) -> None:
    where = orthanc.http_url.removeprefix("http://")
    with pytest.raises(PacsError) as caught:
        PacsClient(PacsSettings(f"https://{where}/dicom-web", timeout_s=5)).check()
    assert str(caught.value) == (
        f"A secure (TLS) connection to the PACS at {where} could not be set up; check that the PACS speaks "
        "https at this address."
    )
