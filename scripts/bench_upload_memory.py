#!/usr/bin/env python
"""Memory of the web process while several browser tabs upload large X-rays at once (issue 9).

Starts the real app (`streamlit run webapp/app.py`, SQLite under a temporary CHEXNET_HOME, the bundled
demo model), loads the model with one small upload, then has N headless Chromium tabs (Debian's
/usr/bin/chromium) upload a 7071x7071 PNG at the same moment and waits until every tab shows its result.
The server's resident memory (VmRSS, /proc) is sampled every 50 ms throughout.

    .venv/bin/python scripts/bench_upload_memory.py               # 8 tabs, zeros and a real X-ray
    .venv/bin/python scripts/bench_upload_memory.py --tabs 3 --kind xray --json

Reports, per kind of file: the RSS after the warm-up (baseline), the peak, peak - baseline, what stays
after every tab is done, and each tab's time to its result. The target of the issue: peak - baseline under
1.5 GB for 8 tabs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from core.cpu_info import cpu_description  # noqa: E402
from core.paths import BUNDLED_MODEL_DIR, SHARED_SAMPLE_DIR  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
SIDE = 7071  # just under the 50-megapixel decode limit
# Any of these on the page means the upload was handled (a result, or the gate's refusal to call findings).
DONE_TEXTS = ("Where the model looked (CAM)", "No findings for this image")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self.running = pid, every_s, 0.0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(self.every_s)

    def stop(self) -> float:
        self.running = False
        self.join()
        return self.peak


def make_files(folder: Path, kinds: list[str]) -> dict[str, Path]:
    from PIL import Image

    files = {}
    small = sorted((SHARED_SAMPLE_DIR / "images").glob("*.png"))[0]
    files["warm-up"] = small
    if "zeros" in kinds:  # a 64 KB file that decodes to 50 megapixels
        files["zeros"] = folder / "zeros-7071.png"
        Image.new("L", (SIDE, SIDE), 0).save(files["zeros"])
    if "xray" in kinds:  # a real X-ray blown up: the full overlay path runs
        files["xray"] = folder / "xray-7071.png"
        with Image.open(small) as image:
            image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(
                files["xray"], compress_level=1
            )
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "CHEXNET_HOME": str(home),
        "CHEXNET_MODEL": str(BUNDLED_MODEL_DIR),
        "CHEXNET_ADMIN_PASSWORD": "bench-admin-password-not-used",
        "PYTHONPATH": str(REPO_ROOT),
    }
    app = str(REPO_ROOT / "webapp" / "app.py")
    command = [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port),
               "--server.headless", "true", "--server.fileWatcherType", "none"]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"error: the app exited at start:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("error: the app did not start within 120 s.")


async def upload_and_wait(browser, url: str, file: Path, timeout_s: float) -> float:
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = await context.new_page()
        await page.goto(url)
        await page.get_by_text("Upload a frontal chest X-ray").wait_for(timeout=60_000)
        started = time.perf_counter()
        await page.locator("input[type=file]").set_input_files(str(file))
        done = page.get_by_text(DONE_TEXTS[0]).or_(page.get_by_text(DONE_TEXTS[1]))
        await done.first.wait_for(timeout=timeout_s * 1000)
        return time.perf_counter() - started
    finally:
        await context.close()


async def drive(url: str, pid: int, files: dict[str, Path], kinds: list[str], tabs: int, timeout_s: float):
    from playwright.async_api import async_playwright

    results = {}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        print("warming up: one small upload loads the model…", file=sys.stderr, flush=True)
        await upload_and_wait(browser, url, files["warm-up"], timeout_s)
        for kind in kinds:
            await asyncio.sleep(2)
            baseline = rss_mb(pid)
            sampler = RssSampler(pid)
            sampler.start()
            size_mb = files[kind].stat().st_size / 1e6
            print(f"{kind}: {tabs} tabs upload {files[kind].name} ({size_mb:.1f} MB) at once…",
                  file=sys.stderr, flush=True)  # fmt: skip
            started = time.perf_counter()
            times = await asyncio.gather(
                *(upload_and_wait(browser, url, files[kind], timeout_s) for _ in range(tabs))
            )
            wall = time.perf_counter() - started
            await asyncio.sleep(2)
            peak = sampler.stop()
            after = rss_mb(pid)
            results[kind] = {
                "file_mb": round(files[kind].stat().st_size / 1e6, 2),
                "baseline_rss_mb": round(baseline),
                "peak_rss_mb": round(peak),
                "peak_minus_baseline_mb": round(peak - baseline),
                "rss_after_mb": round(after),
                "tab_seconds": sorted(round(t, 1) for t in times),
                "wall_seconds": round(wall, 1),
            }
            print(f"{kind}: +{peak - baseline:.0f} MB at peak over {baseline:.0f} MB, all {tabs} tabs done "
                  f"in {wall:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        await browser.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tabs", type=int, default=8)
    parser.add_argument("--kind", choices=["zeros", "xray", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a tab may wait for its result")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: Chromium is not installed at {CHROMIUM} (make test installs it).", file=sys.stderr)
        return 1
    kinds = ["zeros", "xray"] if args.kind == "both" else [args.kind]
    cpu = cpu_description()
    with tempfile.TemporaryDirectory(prefix="chexnet-upload-bench-") as folder:
        root = Path(folder)
        files = make_files(root, kinds)
        process, url = start_server(root / "home", root / "app.log")
        try:
            results = asyncio.run(drive(url, process.pid, files, kinds, args.tabs, args.timeout))
        finally:
            process.terminate()
            process.wait(timeout=30)
        log_text = (root / "app.log").read_text(errors="replace")
    result = {
        "benchmark": "upload_memory",
        "tabs": args.tabs,
        "image": f"{SIDE}x{SIDE} PNG",
        "upload_slots": os.environ.get("CHEXNET_UPLOAD_SLOTS", "2"),
        "cpu": {
            "model": cpu["model"],
            "logical_cpus": cpu["logical_cpus"],
            "features": [name for name, present in cpu["features"].items() if present],
        },  # fmt: skip
        "results": results,
        "server_errors": log_text.count("Traceback"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
