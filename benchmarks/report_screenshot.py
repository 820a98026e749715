"""Screenshot of one section of a report (report.html), as headless Chromium renders it.

Needs Debian's chromium (`apt-get install -y chromium`; not a dependency of zskt-ray). Chromium's
`--screenshot` always draws the top of the page (a URL fragment such as `#pareto-front-of-the-
search` scrolls, but the scrolled screenshot comes out blank), so the section is found in two
passes over the same page at the same width: `--dump-dom` on a copy of the report with a line of
script that records, once every image has loaded, where the section's heading is; then
`--screenshot` of the report itself in a window tall enough to hold the section, cropped there.

    python benchmarks/report_screenshot.py reports/digits-pareto/report.html docs/report-pareto.png
    python benchmarks/report_screenshot.py REPORT.html OUT.png --section hypervolume-over-trials
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
WAIT = "--virtual-time-budget=15000"  # let the page load its embedded images first
PROBE = (
    "<script>window.addEventListener('load', () => {{"
    "const h = document.getElementById('{anchor}');"
    "document.body.setAttribute('data-top', h ? Math.round(h.getBoundingClientRect().top"
    " + window.scrollY) : -1);}});</script></body>"
)


def section_top(report: Path, anchor: str, width: int) -> int:
    """The page offset (CSS pixels) of the heading with id ``anchor``."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.html")
        probe.write_text(report.read_text().replace("</body>", PROBE.format(anchor=anchor), 1))
        dom = subprocess.run(
            [*CHROMIUM, WAIT, f"--window-size={width},1000", "--dump-dom", probe.as_uri()],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    found = re.search(r'data-top="(-?\d+)"', dom)
    if not found or int(found[1]) < 0:
        raise SystemExit(f"{report}: no heading with id {anchor!r}")
    return int(found[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="a report.html written by zskt report")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--section", default="pareto-front-of-the-search", help="heading id")
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=1250, help="pixels from the heading down")
    args = ap.parse_args()
    report = args.report.resolve()
    top = max(0, section_top(report, args.section, args.width) - 12)
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp, "page.png")
        size = f"--window-size={args.width},{top + args.height}"
        subprocess.run(
            [*CHROMIUM, WAIT, size, f"--screenshot={full}", report.as_uri()],
            capture_output=True,
            timeout=300,
            check=True,
        )
        Image.open(full).crop((0, top, args.width, top + args.height)).save(args.out)
    print(f"{args.out}: {args.width}x{args.height}, from y={top} of {report}")


if __name__ == "__main__":
    main()
