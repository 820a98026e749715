"""Screenshot of an ablation report's statistics (docs/ablation-digits.png) in headless Chromium.

Needs Debian's chromium (`apt-get install -y chromium`); it is not a dependency of zskt-ray.

    python benchmarks/ablation_screenshot.py reports/ablation_beta_ns_digits/report.html OUT.png

The report's own HTML, cut down to the sections named by --keep (by default: the per-cell test
accuracy intervals, the paired comparisons with their verdicts, the ANOVA of test accuracy and its
interaction plot), is rendered by `chromium --headless --screenshot` and the blank rows below the
last section are trimmed. Nothing in the report is changed or recomputed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

KEEP = [
    "ablation-cells-over-seeds",
    "per-cell-test-accuracy",
    "ablation-paired-comparisons",
    "ablation-analysis-of-variance",
    "anova-test-accuracy",
]


def cut_down(html: str, keep: list[str]) -> str:
    """The report with only the h2/h3 sections whose ids are in ``keep`` (a section runs to the
    next h2 or h3)."""
    heads = list(re.finditer(r'<h[23] id="([^"]+)"', html))
    end = html.rfind("</body>")
    body_start = heads[0].start()
    parts = []
    for head, nxt in zip(heads, heads[1:] + [None]):
        if head.group(1) in keep:
            parts.append(html[head.start() : nxt.start() if nxt else end])
    return html[:body_start] + "".join(parts) + html[end:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="report.html written by `zskt report`")
    ap.add_argument("out", type=Path, help="PNG to write")
    ap.add_argument("--keep", nargs="+", default=KEEP, help="section ids to show")
    ap.add_argument("--width", type=int, default=1200)
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp, "report.html")
        page.write_text(cut_down(args.report.read_text(), args.keep))
        shot = Path(tmp, "shot.png")
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={args.width},8000",
                f"--screenshot={shot}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        image = Image.open(shot).convert("RGB")
        ink = np.flatnonzero((np.asarray(image.convert("L")) < 250).any(axis=1))
        image.crop((0, 0, args.width, int(ink.max()) + 24)).save(args.out, optimize=True)
    print(f"wrote {args.out} ({image.width} px wide)")


if __name__ == "__main__":
    main()
