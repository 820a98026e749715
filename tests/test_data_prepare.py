"""prepare_dataset: a data set is prepared once per root, behind a file lock, however many
processes ask at once; none reads a half-written data set.

The download is replaced by a fake that writes a tiny CIFAR-10 in torchvision's layout slowly
(``zskt_ray.data._DOWNLOADERS``), so nothing reaches the network.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zskt_ray import data

HERE = Path(__file__).resolve().parent
PER_BATCH = 20  # images per fake CIFAR-10 batch file: 100 train, 20 test


def write_fake_cifar10(root: Path, seconds: float = 0.0, per_batch: int = PER_BATCH) -> None:
    """A tiny CIFAR-10 in torchvision's layout (``per_batch`` images in each of the five training
    files and the test file), each file written in pieces over ``seconds``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [n for n, _ in data._CIFAR10.train_list + data._CIFAR10.test_list]
    blobs = {
        n: pickle.dumps(
            {
                "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                "labels": [i % 10 for i in range(per_batch)],
            }
        )
        for n in names
    }
    blobs["batches.meta"] = pickle.dumps({"label_names": [f"c{i}" for i in range(10)]})
    pause = seconds / (2 * len(blobs))
    for name, blob in blobs.items():
        with open(folder / name, "wb") as f:  # half, a pause, the rest: a torn file meanwhile
            f.write(blob[: len(blob) // 2])
            f.flush()
            time.sleep(pause)
            f.write(blob[len(blob) // 2 :])
        time.sleep(pause)


# One process of the two-process test: it announces itself, prepares the data set with the fake
# slow download (which waits until both processes have started, so the second one meets the
# first's lock), then loads it with download off.
CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
from test_data_prepare import write_fake_cifar10
from zskt_ray import data

root, work, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def slow_download(root):
    with open(work / "downloads", "a") as f:
        f.write(me + "\\n")
    deadline = time.time() + 120
    while len(list(work.glob("started-*"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the other process is now inside prepare_dataset, waiting on the lock
    write_fake_cifar10(root, seconds=2.0)

data._DOWNLOADERS["cifar10"] = slow_download
(work / f"started-{{me}}").touch()
p = data.prepare_dataset("cifar10", root, download=True, log=lambda m: print(m, flush=True))
splits = data.load_dataset("cifar10", root, download=False, val_fraction=0.2)
print(json.dumps({{"downloaded": p.downloaded, "waited_s": p.waited_s,
                  "sizes": [len(splits.train), len(splits.val), len(splits.test)]}}))
"""


@pytest.mark.timeout(300)
def test_two_processes_prepare_one_root_once(tmp_path):
    root, work = tmp_path / "data", tmp_path / "work"
    work.mkdir()
    code = CHILD.format(here=str(HERE))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(root), str(work), me],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert (work / "downloads").read_text().split() in (["a"], ["b"])  # exactly one download
    assert sorted(r["downloaded"] for r in results) == [False, True]
    waiter = next(r for r in results if not r["downloaded"])
    assert waiter["waited_s"] > 1.0  # it met the lock and waited for the download to end
    assert any("waiting for cifar10: another preparation" in out for out, _ in outs)
    for r in results:  # both read the whole data set
        assert r["sizes"] == [80, 20, PER_BATCH]
    assert (root / ".zskt-cifar10.ready").is_file()


def test_a_prepared_root_is_not_prepared_again(tmp_path, monkeypatch):
    calls = []

    def fake(root: Path) -> None:
        calls.append(root)
        write_fake_cifar10(root)

    monkeypatch.setitem(data._DOWNLOADERS, "cifar10", fake)
    first = data.prepare_dataset("cifar10", tmp_path, download=True)
    second = data.prepare_dataset("cifar10", tmp_path, download=True)
    third = data.prepare_dataset("cifar10", tmp_path, download=False)
    assert first.downloaded and not second.downloaded and not third.downloaded
    assert first.root == tmp_path.resolve() and len(calls) == 1


def test_a_preparation_that_died_half_way_is_redone(tmp_path, monkeypatch):
    """A download that failed after writing some files leaves no marker: the next preparation
    downloads again instead of trusting the torn files."""

    def broken(root: Path) -> None:
        (root / "cifar-10-batches-py").mkdir(parents=True)
        (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"torn")
        raise OSError("connection reset")

    monkeypatch.setitem(data._DOWNLOADERS, "cifar10", broken)
    with pytest.raises(OSError, match="connection reset"):
        data.prepare_dataset("cifar10", tmp_path, download=True)
    assert not (tmp_path / ".zskt-cifar10.ready").exists()
    monkeypatch.setitem(data._DOWNLOADERS, "cifar10", write_fake_cifar10)
    assert data.prepare_dataset("cifar10", tmp_path, download=True).downloaded
    assert len(data.load_dataset("cifar10", tmp_path, val_fraction=0.2).test) == PER_BATCH


def test_missing_files_without_download_name_the_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(data._DOWNLOADERS, "cifar10", lambda root: pytest.fail("downloaded"))
    with pytest.raises(FileNotFoundError) as e:
        data.prepare_dataset("cifar10", tmp_path, download=False)
    assert str(tmp_path.resolve()) in str(e.value) and "\n" not in str(e.value)


def test_files_placed_by_hand_are_accepted_without_download(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path)
    monkeypatch.setitem(data._DOWNLOADERS, "cifar10", lambda root: pytest.fail("downloaded"))
    p = data.prepare_dataset("cifar10", tmp_path, download=False)
    assert not p.downloaded


def test_in_memory_data_sets_need_no_preparation(tmp_path):
    for name in ("digits", "toy2d"):
        p = data.prepare_dataset(name, tmp_path / "none", download=True)
        assert not p.downloaded and p.waited_s == 0.0
    assert not (tmp_path / "none").exists()  # nothing created


def test_waiting_for_the_lock_can_time_out(tmp_path):
    from filelock import FileLock

    with FileLock(str(tmp_path / ".zskt-svhn.prepare.lock")):  # another process's preparation
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="held its lock"):
            data.prepare_dataset("svhn", tmp_path, download=True, timeout=0.5)
        assert time.monotonic() - t0 < 30
    assert os.listdir(tmp_path) == [".zskt-svhn.prepare.lock"]
