"""Screenshot of a study's runs page in the MLflow UI (docs/mlflow-runs.png), in headless Chromium.

Needs Debian's chromium (`apt-get install -y chromium`) and Playwright's Python package
(`pip install playwright`; its own browser download is not needed: the system chromium is used).
Neither is a dependency of zskt-ray.

    python benchmarks/mlflow_screenshot.py --demo OUT.png          # a digits-like demo store
    python benchmarks/mlflow_screenshot.py --tracking-uri URI --experiment-id 1 OUT.png

--demo writes a study like `zskt study run studies/digits.yaml` does, through the same tracking
functions (`zskt_ray.study.tracking`: experiment kind, parent run, nested trial runs and their
names), with made-up metric values and no training. `mlflow ui` is started on a free port of
127.0.0.1 and stopped by its process group when done. The page opened is the link the study
prints; the script then picks the columns val_acc, test_acc, mte and the searched parameters
(MLflow keeps a column choice per browser, an experiment cannot preset it), widens the run-name
column and expands the study's parent run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

COLUMNS = ["val_acc", "test_acc", "mte", "n_g", "n_s", "beta", "z_dim", "lr_s"]


def demo_store(uri: str) -> str:
    """A digits-like study written through zskt_ray.study.tracking; returns its experiment id."""
    from zskt_ray import names
    from zskt_ray.study import tracking
    from zskt_ray.study.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "studies" / "digits.yaml")
    searched = [p.name for p in spec.space]
    info = tracking.setup_study(uri, spec.experiment, spec.name, spec.raw, searched)
    base = dataclasses.asdict(spec.base)
    rng = random.Random(1)
    for i in range(8):
        searched = {
            "n_g": rng.randint(1, 2),
            "n_s": rng.randint(3, 10),
            "beta": rng.choice([0, 50, 250, 1000]),
            "z_dim": rng.choice([32, 64, 100]),
            "lr_s": round(10 ** rng.uniform(-3, -2.22), 5),
        }
        run = tracking.TrialRun.open(
            info, "search", f"5e1a2_{i:05d}", {**base, **searched}, f"cfg{i}", "cpu"
        )
        stop = 100 if i in (2, 5) else 25
        for it in range(25, stop + 1, 25):
            value = 60 + 30 * (1 - 0.6 ** (it / 25)) + rng.gauss(0, 2)
            run.log_metrics({"val_acc": value, "kl": 0.1 / it}, it)
        if stop == 100:
            run.log_metrics({"mte": 0.05}, 100)
            run.finish(names.COMPLETED)
        else:
            run.finish(names.PRUNED, "stopped by the scheduler at iteration 25 of 100")
    best = {"n_g": 1, "n_s": 6, "beta": 0, "z_dim": 100, "lr_s": 0.0019}
    for seed in range(3):
        params = {**base, **best, "seed": seed}
        run = tracking.TrialRun.open(info, "final", f"final-0-seed{seed}", params, "best", "cpu")
        for it in range(50, 401, 50):
            run.log_metrics({"val_acc": 90 + 7 * (1 - 0.5 ** (it / 50))}, it)
        run.log_metrics({"test_acc": 96.5 + 0.2 * seed, "mte": 0.014}, 400)
        run.finish(names.COMPLETED)
    tracking.finish_study(info, {})
    print(tracking.how_to_open(uri, info.experiment_id))
    return info.experiment_id


def screenshot(url: str, out: Path, columns: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 2050, "height": 760})
        page.goto(url, timeout=120_000)
        page.wait_for_selector("text=Training runs", timeout=120_000)  # the model-training view
        time.sleep(3)
        try:  # the assistant side panel, when MLflow opens it
            page.locator('[aria-label="Close"]').first.click(timeout=2000)
        except Exception:  # noqa: BLE001
            pass
        page.get_by_role("button", name="Columns").first.click(timeout=5000)
        time.sleep(1)
        for c in columns:
            try:
                page.get_by_role("menuitemcheckbox", name=c, exact=True).first.click(timeout=3000)
            except Exception:  # noqa: BLE001 - another widget kind: by its text
                try:
                    page.get_by_text(c, exact=True).first.click(timeout=3000)
                except Exception as e:  # noqa: BLE001 - a column the store lacks
                    print(f"column {c}: {str(e).splitlines()[0]}")
        page.keyboard.press("Escape")
        time.sleep(1)
        head = page.locator('.ag-header-cell:has-text("Run Name")').first.bounding_box()
        x, y = head["x"] + head["width"] - 2, head["y"] + head["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 260, y, steps=8)
        page.mouse.up()
        page.locator(".ag-row button").first.click(timeout=5000)  # expand the study's run
        time.sleep(3)
        page.mouse.move(5, 5)
        page.screenshot(path=str(out))
        browser.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--demo", action="store_true", help="write a demo study store first")
    ap.add_argument("--tracking-uri", help="an existing SQLite store (sqlite:////abs/path.db)")
    ap.add_argument("--experiment-id", default="1")
    ns = ap.parse_args()
    if ns.demo:
        home = Path(tempfile.mkdtemp(prefix="zskt-shot-"))
        uri = f"sqlite:///{home / 'mlflow.db'}"
        exp_id = demo_store(uri)
    elif ns.tracking_uri:
        uri, exp_id = ns.tracking_uri, ns.experiment_id
    else:
        ap.error("give --demo or --tracking-uri")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        screenshot(f"{base}/#/experiments/{exp_id}/runs", ns.out, COLUMNS)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
