"""A fake, slow CIFAR-10 download for multi-node tests, loaded in every Ray worker through the
``ZSKT_TEST_DOWNLOADER`` hook of zskt_ray/data.py (``/abs/tests/fake_download.py:slow_cifar10``).

Each call appends one line (the process id and the root) to the file ``$ZSKT_TEST_DOWNLOADS_LOG``,
then writes a CIFAR-10 in torchvision's layout over about 3 s: 1,002 images per file, so that the
training split keeps a few images besides the 5,000 the loader holds out for validation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_data_prepare import write_fake_cifar10  # noqa: E402

PER_BATCH = 1002
LOG_ENV = "ZSKT_TEST_DOWNLOADS_LOG"


def slow_cifar10(name: str, root: Path) -> None:
    assert name == "cifar10", name
    with open(os.environ[LOG_ENV], "a") as f:
        f.write(f"{os.getpid()} {root}\n")
    write_fake_cifar10(Path(root), seconds=3.0, per_batch=PER_BATCH)
