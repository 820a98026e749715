"""benchmarks/gpu.sh must keep working between GPU sessions: its CPU mode runs in the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_on_the_cpu_and_prints_one_table(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--cpu", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "no GPU: CPU figures at small sizes" in lines[0]
    header = [i for i, line in enumerate(lines) if line.startswith("part  variant")]
    assert len(header) == 1  # one table
    rows = json.loads(out.read_text())["rows"]
    assert not [r for r in rows if r["value"] is None], [r["note"] for r in rows]
    loop = [r["variant"] for r in rows if r["part"] == "loop"]
    assert loop[0] == "reference fp32 NCHW" and len(loop) == 1 + 4 * 2
    for precision in ("fp32", "tf32", "bf16", "fp16"):
        assert {f"zskt-ray {precision} NCHW", f"zskt-ray {precision} NHWC"} <= set(loop)
    pack = [r for r in rows if r["part"] == "pack"]
    assert [r["variant"].split()[0] for r in pack] == ["1", "2"]  # 4 needs a GPU
    assert all(r["value"] > 0 and r["peak_mib"] > 0 for r in pack)
    mte = [r for r in rows if r["part"] == "mte"]
    assert len(mte) == 2 and mte[1]["max_abs_diff"] < 1e-5  # batched == per image
    assert len(lines) - header[0] - 1 >= len(rows)  # every row printed under the header
