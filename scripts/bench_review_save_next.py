#!/usr/bin/env python
"""Save & next -> next image ready on the Review page, in a real browser (issue 20).

Starts the real app (`streamlit run webapp/app.py`, SQLite under a temporary CHEXNET_HOME, a small
random-weight model so the model's scores and CAM are computed as in AI-first reads), imports either the
24 original 1024-px NIH PNGs of the shared sample (`--images full`, the default: the larger image the
reading layout shows) or the 512-px sample copies (`--images sample`), logs a clinician in with Debian's
headless Chromium and reads images with the keyboard: E (Effusion) unless already on, then Enter. The
time is from Enter to the next image's heading and every element of the page fresh (nothing stale).

    .venv/bin/python scripts/bench_review_save_next.py                 # 10 reads at 1024x768 and 1440x900
    .venv/bin/python scripts/bench_review_save_next.py --reads 15 --images sample --json

Prints each viewport's median and every timing. The target of the issue: a median of 0.5 s or less.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
PASSWORD = "bench save next password"
STALE = "() => document.querySelectorAll('[data-stale=\"true\"]').length === 0"


def _dataset(root: Path, images: str) -> Path:
    import pandas as pd

    from core.paths import SHARED_SAMPLE_DIR

    source = SHARED_SAMPLE_DIR / ("full-resolution" if images == "full" else "images")
    (root / "images").mkdir(parents=True)
    names = sorted(path.name for path in source.glob("*.png"))
    for name in names:
        (root / "images" / name).symlink_to(source / name)
    entries = pd.read_csv(SHARED_SAMPLE_DIR / DATA_ENTRY)
    entries[entries["Image Index"].isin(set(names))].to_csv(root / DATA_ENTRY, index=False)
    (root / "train_val_list.txt").write_text("".join(f"{name}\n" for name in names))
    (root / "test_list.txt").write_text("")
    return root


def _prepare(home: Path, images: str) -> dict[str, str]:
    import torch

    from core.inference.artifact import new_card, save_artifact
    from core.inference.models import create_model
    from db import accounts
    from db.engine import dispose_engine, get_engine, session_scope
    from db.importer import import_chestxray14

    torch.manual_seed(0)
    save_artifact(create_model(), home / "model", new_card("bench-save-next"))
    url = f"sqlite:///{home / 'bench.db'}"
    import_chestxray14(get_engine(url), _dataset(home / "dataset", images))
    with session_scope(url) as session:
        accounts.create_user(session, "reader", PASSWORD, role="clinician")
    dispose_engine(url)
    return {"CHEXNET_HOME": str(home), "DATABASE_URL": url, "CHEXNET_MODEL": str(home / "model"),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _settle(page) -> None:
    page.wait_for_timeout(200)
    page.wait_for_function(STALE)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"] button')")


def _reads(page, n: int) -> list[float]:
    heading = page.get_by_role("heading", name=re.compile(r"\d{8}_\d{3}\.png"))
    effusion = page.locator(".st-key-review_f_Effusion [data-testid='stBaseButton-primary']")
    timings = []
    for _ in range(n):
        heading.wait_for(timeout=300_000)
        page.locator(".js-plotly-plot").first.wait_for()
        _settle(page)
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.wait_for_timeout(300)  # a reader looks at the image; the page reads the next one ahead
        name = heading.inner_text().strip()
        if not effusion.count():
            page.keyboard.press("e")
            effusion.first.wait_for()
            _settle(page)
        started = time.perf_counter()
        page.keyboard.press("Enter")
        heading.filter(has_not_text=name).wait_for()
        page.wait_for_function(STALE)
        timings.append(time.perf_counter() - started)
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10, help="reads per viewport (default 10)")
    parser.add_argument("--images", choices=("full", "sample"), default="full")
    parser.add_argument("--ai", choices=("shown", "hidden"), default="shown",
                        help="the reader's Show AI choice (hidden: no scores, table or CAM)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from tests.browser_fixtures import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    viewports = ((1024, 768), (1440, 900))
    result: dict = {"images": args.images, "ai": args.ai, "reads_per_viewport": args.reads, "viewports": {}}
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        env = _prepare(home, args.images)
        with streamlit_server(env, home / "app.log") as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for width, height in viewports:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(120_000)
                page.goto(f"{url}/login")
                page.get_by_role("textbox", name="Username").wait_for(timeout=180_000)
                page.get_by_role("textbox", name="Username").fill("reader")
                page.get_by_role("textbox", name="Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                if args.ai == "hidden":  # from the next image on: the first read below is still AI-first
                    page.locator(".st-key-review_show_ai").wait_for(timeout=300_000)
                    _settle(page)
                    page.locator(".st-key-review_show_ai label").first.click()
                    _settle(page)
                timings = _reads(page, args.reads)
                result["viewports"][f"{width}x{height}"] = {
                    "median_s": round(statistics.median(timings), 3),
                    "timings_s": [round(t, 3) for t in timings],
                }
                page.close()
            browser.close()
    if args.json:
        print(json.dumps(result))
    else:
        for size, numbers in result["viewports"].items():
            print(f"{size}: save -> next median {numbers['median_s']:.3f} s over {args.reads} reads "
                  f"({args.images} images, AI {args.ai}): {numbers['timings_s']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
