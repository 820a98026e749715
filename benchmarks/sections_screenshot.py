"""Screenshot of chosen sections of a study's report, rendered in headless Chromium.

Loads the study the way ``zskt report`` does, builds its report page, keeps the sections whose
headings are named (each up to the next heading of its level), renders them with the report's own
HTML template into a temporary folder and photographs that page with Debian's ``chromium``
(``chromium --headless --screenshot=OUT --window-size=W,H``; not a dependency of zskt-ray).
Sections far apart on the page (Run health and Cost) come out as one picture;
``report_screenshot.py`` beside it photographs one section of a written report.html.

    python benchmarks/sections_screenshot.py studies/digits.yaml --section "Run health" \\
        --section Cost --out docs/report-health-cost.png --height 2400
    python benchmarks/sections_screenshot.py --experiment provoked --tracking-uri URI ...
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from zskt_ray.analysis.blocks import Heading
from zskt_ray.analysis.load import load_study, resolve_study
from zskt_ray.analysis.render import render_html
from zskt_ray.analysis.sections import ReportOptions, study_page


def sections(blocks: list, titles: list[str]) -> list:
    """The blocks of the sections headed by ``titles`` (in page order)."""
    out, keep, level = [], False, 0
    for b in blocks:
        if isinstance(b, Heading) and (keep and b.level <= level or b.text in titles):
            keep, level = b.text in titles, b.level
        if keep:
            out.append(b)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_file", nargs="?", help="a study file (else --experiment)")
    p.add_argument("--experiment")
    p.add_argument("--tracking-uri")
    p.add_argument("--section", action="append", required=True, help="a section heading")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--width", type=int, default=1100)
    p.add_argument("--height", type=int, default=2400)
    args = p.parse_args()
    ref = resolve_study(args.study_file, args.experiment, args.tracking_uri)
    data = load_study(ref, progress=False)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        (out / "figures").mkdir()
        page = study_page(data, out, out / "figures", ReportOptions())
        blocks = sections(page.blocks, args.section)
        if not blocks:
            raise SystemExit(f"no section named {args.section} in the report")
        html = out / "sections.html"
        html.write_text(
            render_html(blocks, out, title=f"{data.ref.name}: {', '.join(args.section)}")
        )
        shot = out / "shot.png"
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--hide-scrollbars",
                f"--screenshot={shot}",
                f"--window-size={args.width},{args.height}",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        shutil.copyfile(shot, args.out)
    print(f"wrote {args.out} ({len(blocks)} blocks of {', '.join(args.section)})")


if __name__ == "__main__":
    main()
