"""Real data sets, used to train teachers, evaluate students and run the few-shot baseline.

Four data sets: ``toy2d`` (points in the plane from scikit-learn's generators, three classes; made
offline in milliseconds, for watching the method work and for fast end-to-end tests), ``digits``
(scikit-learn's bundled 8x8 digits at their native size; offline, for quick runs and tests),
``cifar10`` and ``svhn`` (torchvision's parsers, files under ``root``). Every item is ``(float32
normalised input, int label)``: a CxHxW image, or for ``toy2d`` a vector of 2 coordinates. Each
data set comes as three disjoint splits: train, a fixed validation split carved out of the
training set (so that studies can select configurations without touching the test set, see the
method notes section 7), and test.

Files live in ``<root>/cifar-10-batches-py/`` (torchvision's layout) and ``<root>/svhn/``
(``train_32x32.mat``, ``test_32x32.mat``). Nothing is downloaded unless asked: missing files raise
a one-line FileNotFoundError saying where they were looked for and how to fetch them.
:func:`prepare_dataset` makes a data set readable under a root once, behind a file lock, so that
many processes (trials on one node, or nodes sharing one root) never download into the same
folder at the same time; they then open the files with ``download=False``.

CIFAR-10 and SVHN images are kept as the uint8 arrays torchvision parsed and turned into tensors
a batch at a time (``__getitems__``), so DataLoaders with ``num_workers=0`` are fast on CPU.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision import datasets as tv_datasets

from .utils import acquire_lock

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DataSplits",
    "Prepared",
    "dataset_info",
    "has_files",
    "load_dataset",
    "make_loader",
    "prepare_dataset",
    "train_labels",
]

DATASETS: tuple[str, ...] = ("digits", "cifar10", "svhn", "toy2d")

# Validation images carved out of the CIFAR-10 / SVHN training split when val_fraction is None.
DEFAULT_VAL_SIZE = 5000
# digits: test = 20% and validation = 10% of all 1797 images, both stratified and fixed.
DIGITS_TEST_FRACTION = 0.2
DIGITS_VAL_FRACTION = 0.1
DIGITS_SPLIT_STATE = 0
SVHN_DIR = "svhn"
# toy2d: two interleaved moons (classes 0, 1) and a Gaussian blob (class 2) under the lower moon;
# 1,000 points per class; test = 20% and validation = 10% of all points, both stratified and fixed.
TOY2D_POINTS_PER_CLASS = 1000
TOY2D_NOISE = 0.1
TOY2D_BLOB_CENTER = (-0.4, -0.7)
TOY2D_BLOB_STD = 0.2
TOY2D_TEST_FRACTION = 0.2
TOY2D_VAL_FRACTION = 0.1
TOY2D_STATE = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a data set, without touching its files.

    ``image_size == 0`` marks a data set of vectors (``toy2d``): each input is ``in_channels``
    numbers, not an image, and ``mean``/``std`` are per coordinate.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def is_image(self) -> bool:
        """True for image data sets, False for vector data (``image_size == 0``)."""
        return self.image_size > 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(C, H, W)`` for images, ``(in_channels,)`` for vectors."""
        if self.is_image:
            return (self.in_channels, self.image_size, self.image_size)
        return (self.in_channels,)


_INFOS: dict[str, DatasetInfo] = {
    # 2-D points; mean/std of the training split per coordinate (tests/test_toy2d.py recomputes
    # them).
    "toy2d": DatasetInfo("toy2d", 3, 2, 0, (0.1966, -0.0651), (0.8446, 0.6250)),
    # Native 8x8 (upsampling adds no information and costs 4x the compute). Mean/std of the
    # training split after scaling to [0, 1] (population std over all pixels); tests/test_data.py
    # recomputes them.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3049,), (0.3758,)),
    # The paper's (official code's) constants.
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    "svhn": DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def dataset_info(name: str) -> DatasetInfo:
    """Shape, class count and normalisation of ``name``; no file access."""
    try:
        return _INFOS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}"
        ) from None


@dataclass
class DataSplits:
    """Train (without the validation part), validation (carved from train) and test splits."""

    info: DatasetInfo
    train: Dataset
    val: Dataset
    test: Dataset


# --------------------------------------------------------------------------------------------
# In-memory datasets


class LabelledTensorDataset(TensorDataset):
    """A TensorDataset of ``(image, label)`` whose labels come out as Python ints."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(images, labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.tensors[0][index], int(self.tensors[1][index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        return [self[i] for i in indices]


class ImageArrayDataset(Dataset):
    """uint8 images (as parsed by torchvision) normalised, optionally augmented, per batch.

    The augmentation is the paper's RandomCrop(32, padding=4) (zero padding) followed by
    RandomHorizontalFlip, drawn from torch's global generator, then ToTensor + Normalize; it is
    done on whole batches of uint8 tensors instead of one PIL image at a time, which gives the
    same distribution of images at a fraction of the CPU cost. Several instances may share one
    array (the training split with augmentation, the validation split without).
    """

    def __init__(
        self,
        data: np.ndarray,
        targets: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool,
        augment: bool = False,
        padding: int = 4,
    ) -> None:
        if len(data) != len(targets):
            raise ValueError(f"{len(data)} images but {len(targets)} labels")
        self.data = data
        self.targets = np.asarray(targets, dtype=np.int64)
        self.channels_last = channels_last
        self.augment = augment
        self.padding = padding
        self._mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    def images(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """The (augmented) normalised float32 batch ``(B, C, H, W)`` for ``indices``."""
        x = torch.from_numpy(np.ascontiguousarray(self.data[np.asarray(indices, dtype=np.int64)]))
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        if self.augment:
            x = self._crop_and_flip(x)
        x = x.contiguous().to(torch.float32).div(255)
        return x.sub_(self._mean).div_(self._std)

    def _crop_and_flip(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p))  # zero fill, as RandomCrop(padding=p)
        top = torch.randint(0, 2 * p + 1, (b,))
        left = torch.randint(0, 2 * p + 1, (b,))
        rows = (top[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (left[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        out = padded[torch.arange(b)[:, None, None], :, rows, cols]  # (B, H, W, C)
        out = out.permute(0, 3, 1, 2)
        flip = torch.rand(b) < 0.5
        out[flip] = out[flip].flip(-1)
        return out

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images([index])[0], int(self.targets[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        x = self.images(indices)
        return [(x[k], int(self.targets[i])) for k, i in enumerate(indices)]


# --------------------------------------------------------------------------------------------
# torchvision data sets that check files exist instead of their md5 (unless downloading)


def _readable(path: str | Path) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


class _CIFAR10(tv_datasets.CIFAR10):
    """torchvision's CIFAR10 parser; md5 sums are verified only around a download."""

    def __init__(self, root: str | Path, train: bool, download: bool) -> None:
        self._verify_md5 = download
        if not download:
            self.meta = {**type(self).meta, "md5": None}  # check_integrity(md5=None): exists
        super().__init__(root, train=train, download=download)

    def _check_integrity(self) -> bool:
        if self._verify_md5:
            return super()._check_integrity()
        folder = Path(self.root) / self.base_folder
        return all(_readable(folder / name) for name, _ in self.train_list + self.test_list)


class _SVHN(tv_datasets.SVHN):
    """torchvision's SVHN parser; the md5 sum is verified only around a download."""

    def __init__(self, root: str | Path, split: str, download: bool) -> None:
        self._verify_md5 = download
        super().__init__(root, split=split, download=download)

    def _check_integrity(self) -> bool:
        if self._verify_md5:
            return super()._check_integrity()
        return _readable(Path(self.root) / self.filename)


def _require_files(name: str, folder: Path, files: Sequence[str]) -> None:
    missing = [f for f in files if not _readable(folder / f)]
    if missing:
        raise FileNotFoundError(
            f"{name} data not found in {folder.resolve()} (missing: {', '.join(missing)}); "
            "pass --download (or set download: true in the config) to fetch it"
        )


# --------------------------------------------------------------------------------------------
# Loading


def _val_size(n_train: int, val_fraction: float | None, default: int) -> int:
    if val_fraction is None:
        n_val = default
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n_val = int(round(val_fraction * n_train))
    if n_val >= n_train:
        raise ValueError(
            f"validation split of {n_val} images leaves no training images out of {n_train}; "
            "pass a smaller val_fraction"
        )
    return n_val


def _carve(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: the first n_val of a seeded permutation go to validation."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _load_digits(val_fraction: float | None) -> DataSplits:
    from sklearn.datasets import load_digits

    info = _INFOS["digits"]
    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).to(torch.float32)[:, None]  # N x 1 x 8 x 8
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    full = LabelledTensorDataset((images - mean) / std, torch.from_numpy(labels))

    # Fixed splits (independent of any seed) so that every run shares one test set.
    return _fixed_splits(
        info,
        full,
        labels,
        DIGITS_TEST_FRACTION,
        DIGITS_VAL_FRACTION,
        val_fraction,
        DIGITS_SPLIT_STATE,
    )


def _fixed_splits(
    info: DatasetInfo,
    full: Dataset,
    labels: np.ndarray,
    test_fraction: float,
    default_val_fraction: float,
    val_fraction: float | None,
    state: int,
) -> DataSplits:
    """Stratified train / validation / test splits of an in-memory data set, fixed by ``state``.

    The test split is ``test_fraction`` of all items; validation is ``default_val_fraction`` of all
    items, or ``val_fraction`` of the rest when given.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=state)
    if val_fraction is None:
        n_val = int(round(default_val_fraction * len(labels)))
    else:
        n_val = _val_size(len(rest), val_fraction, 0)
    if n_val > 0:
        train, val = train_test_split(
            rest, test_size=n_val, stratify=labels[rest], random_state=state
        )
    else:
        train, val = rest, rest[:0]
    return DataSplits(
        info,
        Subset(full, np.sort(train).tolist()),
        Subset(full, np.sort(val).tolist()),
        Subset(full, np.sort(test).tolist()),
    )


def toy2d_points() -> tuple[np.ndarray, np.ndarray]:
    """All toy2d points (float32, N x 2, unnormalised) and labels, the same on every call."""
    from sklearn.datasets import make_blobs, make_moons

    n = TOY2D_POINTS_PER_CLASS
    moons, moon_labels = make_moons(2 * n, noise=TOY2D_NOISE, random_state=TOY2D_STATE)
    blob, _ = make_blobs(
        n, centers=[TOY2D_BLOB_CENTER], cluster_std=TOY2D_BLOB_STD, random_state=TOY2D_STATE
    )
    points = np.concatenate([moons, blob]).astype(np.float32)
    labels = np.concatenate([moon_labels, np.full(n, 2)]).astype(np.int64)
    return points, labels


def _load_toy2d(val_fraction: float | None) -> DataSplits:
    info = _INFOS["toy2d"]
    points, labels = toy2d_points()
    mean = torch.tensor(info.mean).view(1, -1)
    std = torch.tensor(info.std).view(1, -1)
    full = LabelledTensorDataset((torch.from_numpy(points) - mean) / std, torch.from_numpy(labels))
    # Fixed splits (independent of any seed), as for digits.
    return _fixed_splits(
        info, full, labels, TOY2D_TEST_FRACTION, TOY2D_VAL_FRACTION, val_fraction, TOY2D_STATE
    )


def _split_arrays(
    info: DatasetInfo,
    train_data: np.ndarray,
    train_targets: np.ndarray,
    test_data: np.ndarray,
    test_targets: np.ndarray,
    channels_last: bool,
    augment: bool,
    val_fraction: float | None,
    split_seed: int,
) -> DataSplits:
    def make(data: np.ndarray, targets: np.ndarray, aug: bool) -> ImageArrayDataset:
        return ImageArrayDataset(data, targets, info.mean, info.std, channels_last, aug)

    n_val = _val_size(len(train_data), val_fraction, DEFAULT_VAL_SIZE)
    train_idx, val_idx = _carve(len(train_data), n_val, split_seed)
    # Two views of one array: validation never sees the augmentation.
    return DataSplits(
        info,
        Subset(make(train_data, train_targets, augment), train_idx.tolist()),
        Subset(make(train_data, train_targets, False), val_idx.tolist()),
        make(test_data, test_targets, False),
    )


def _load_cifar10(
    root: Path, download: bool, augment: bool, val_fraction: float | None, split_seed: int
) -> DataSplits:
    if not download:
        files = [n for n, _ in _CIFAR10.train_list + _CIFAR10.test_list]
        _require_files("cifar10", root / _CIFAR10.base_folder, files + [_CIFAR10.meta["filename"]])
    train = _CIFAR10(root, train=True, download=download)
    test = _CIFAR10(root, train=False, download=download)
    return _split_arrays(
        _INFOS["cifar10"],
        train.data,
        np.asarray(train.targets),
        test.data,
        np.asarray(test.targets),
        channels_last=True,
        augment=augment,
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


def _load_svhn(
    root: Path, download: bool, val_fraction: float | None, split_seed: int
) -> DataSplits:
    folder = root / SVHN_DIR
    if not download:
        _require_files("svhn", folder, [_SVHN.split_list[s][1] for s in ("train", "test")])
    train = _SVHN(folder, split="train", download=download)
    test = _SVHN(folder, split="test", download=download)
    return _split_arrays(
        _INFOS["svhn"],
        train.data,
        train.labels,
        test.data,
        test.labels,
        channels_last=False,  # torchvision keeps SVHN as N x C x H x W
        augment=False,  # the paper trains SVHN teachers without augmentation
        val_fraction=val_fraction,
        split_seed=split_seed,
    )


# --------------------------------------------------------------------------------------------
# Preparing the files once per root


def _files(name: str, root: Path) -> list[Path]:
    """The files ``load_dataset(name, root, download=False)`` reads (none for in-memory sets)."""
    if name == "cifar10":
        folder = root / _CIFAR10.base_folder
        names = [n for n, _ in _CIFAR10.train_list + _CIFAR10.test_list]
        return [folder / n for n in [*names, _CIFAR10.meta["filename"]]]
    if name == "svhn":
        return [root / SVHN_DIR / _SVHN.split_list[s][1] for s in ("train", "test")]
    return []


def _download_cifar10(root: Path) -> None:
    """torchvision's CIFAR-10 archive into ``root``, unpacked; md5 sums checked (skipped when
    every file is already there intact)."""
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    folder = root / _CIFAR10.base_folder
    meta = _CIFAR10.meta
    expected = [*_CIFAR10.train_list, *_CIFAR10.test_list, [meta["filename"], meta["md5"]]]
    if all(check_integrity(str(folder / n), md5) for n, md5 in expected):
        return
    download_and_extract_archive(
        _CIFAR10.url, str(root), filename=_CIFAR10.filename, md5=_CIFAR10.tgz_md5
    )


def _download_svhn(root: Path) -> None:
    """torchvision's SVHN train and test files into ``root/svhn``; md5 sums checked (a file
    already there intact is kept)."""
    from torchvision.datasets.utils import download_url

    for split in ("train", "test"):
        url, filename, md5 = _SVHN.split_list[split]
        download_url(url, str(root / SVHN_DIR), filename, md5)


# The download of each file-based data set. The only place that reaches the network; tests
# replace an entry with a fake (a slow writer) to check the locking.
_DOWNLOADERS: dict[str, Callable[[Path], None]] = {
    "cifar10": _download_cifar10,
    "svhn": _download_svhn,
}
# Test hook: ``ZSKT_TEST_DOWNLOADER=/abs/file.py:function`` replaces every download by
# ``function(name, root)`` in each process that sees the variable (the Ray workers of a test
# cluster inherit it from the test), so that a multi-node test counts downloads offline.
DOWNLOADER_HOOK_ENV = "ZSKT_TEST_DOWNLOADER"


def _downloader(name: str) -> Callable[[Path], None]:
    hook = os.environ.get(DOWNLOADER_HOOK_ENV)
    if not hook:
        return _DOWNLOADERS[name]
    import importlib.util

    file, _, function = hook.rpartition(":")
    spec = importlib.util.spec_from_file_location("zskt_test_downloader", file)
    if spec is None or spec.loader is None:
        raise ImportError(f"{DOWNLOADER_HOOK_ENV}: cannot load {file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake = getattr(module, function)
    return lambda root: fake(name, root)


def has_files(name: str) -> bool:
    """True for a data set read from files under a root (CIFAR-10, SVHN); False for one made in
    memory (digits, toy2d), which needs no preparation on any machine."""
    return bool(_files(dataset_info(name).name, Path(".")))


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare_dataset` found or did."""

    name: str
    root: Path  # absolute
    downloaded: bool  # this call ran the download (which checks md5 sums)
    waited_s: float  # seconds spent waiting for another process's preparation of this root


def _marker(name: str, root: Path) -> Path:
    return root / f".zskt-{name}.ready"


def _lock_path(name: str, root: Path) -> Path:
    return root / f".zskt-{name}.prepare.lock"


def _ready(name: str, root: Path, downloaded_only: bool) -> bool:
    """Every file readable (and, with ``downloaded_only``, a finished preparation's marker)."""
    if downloaded_only and not _marker(name, root).is_file():
        return False
    return all(_readable(f) for f in _files(name, root))


def prepare_dataset(
    name: str,
    root: str | Path = "data",
    download: bool = False,
    timeout: float | None = None,
    log: Callable[[str], None] | None = None,
) -> Prepared:
    """Make data set ``name`` readable under ``root``, once, however many processes ask at once.

    The preparation runs behind a file lock beside the data (``<root>/.zskt-<name>.prepare.lock``,
    ``filelock``: ``flock``, which the operating system drops when its process dies): of
    concurrent callers on one root, one downloads and the others wait, then find the data set
    ready. A finished download leaves a marker (``<root>/.zskt-<name>.ready``), written after the
    files are complete; a preparation that died half-way left none, so the next one checks the
    files' md5 sums and downloads what is missing or broken. With ``download=False`` nothing is
    fetched: the files must be there (after waiting for a preparation in progress; files placed
    by hand, without a marker, are accepted), else a one-line FileNotFoundError. In-memory data
    sets (digits, toy2d) need nothing.

    The same call serves a node-local root (one call per node) and a root on a shared file system
    (one call anywhere, or one per node: all but the first find it ready; ``flock`` works across
    NFS clients that support locks). Trials then call ``load_dataset(name, root,
    download=False)``. ``timeout`` (seconds, default unlimited) bounds the wait for the lock.
    """
    info = dataset_info(name)
    root = Path(root).expanduser().resolve()
    files = _files(info.name, root)
    if not files:
        return Prepared(info.name, root, False, 0.0)
    if _ready(info.name, root, downloaded_only=True):
        return Prepared(info.name, root, False, 0.0)
    relative = [str(f.relative_to(root)) for f in files]
    if not download and root.is_dir() and not os.access(root, os.W_OK):
        _require_files(info.name, root, relative)  # a read-only copy nobody prepares here
        return Prepared(info.name, root, False, 0.0)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(_lock_path(info.name, root)))
    waited = acquire_lock(lock, f"{info.name}: another preparation of {root}", timeout, log)
    try:
        if _ready(info.name, root, downloaded_only=download):
            return Prepared(info.name, root, False, waited)
        if not download:
            _require_files(info.name, root, relative)  # placed by hand: no marker, no download
            return Prepared(info.name, root, False, waited)
        if log is not None:
            log(f"{info.name}: downloading into {root}")
        _marker(info.name, root).unlink(missing_ok=True)
        _downloader(info.name)(root)
        _require_files(info.name, root, relative)
        tmp = _marker(info.name, root).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
        )
        os.replace(tmp, _marker(info.name, root))  # atomic: the marker is whole or absent
        return Prepared(info.name, root, True, waited)
    finally:
        lock.release()


def load_dataset(
    name: str,
    root: str | Path = "data",
    download: bool = False,
    augment: bool = False,
    val_fraction: float | None = None,
    split_seed: int = 0,
) -> DataSplits:
    """Train/validation/test splits of ``name``.

    ``augment`` (random crop + flip) applies to the CIFAR-10 training split only. The validation
    split is ``val_fraction`` of the training set (default: 5,000 images for CIFAR-10/SVHN, a
    fixed 10% of all images for digits and toy2d), drawn with ``split_seed`` for CIFAR-10/SVHN; the
    digits and toy2d splits are fixed. Files are downloaded only when ``download`` is true.
    """
    info = dataset_info(name)
    root = Path(root)
    if name == "toy2d":
        return _load_toy2d(val_fraction)
    if name == "digits":
        return _load_digits(val_fraction)
    if name == "cifar10":
        return _load_cifar10(root, download, augment, val_fraction, split_seed)
    if name == "svhn":
        return _load_svhn(root, download, val_fraction, split_seed)
    raise AssertionError(f"dataset {info.name!r} has no loader")  # pragma: no cover


def make_loader(
    ds: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """DataLoader whose shuffling order depends only on ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


def train_labels(ds: Any) -> np.ndarray:
    """int64 labels of ``ds`` (possibly nested Subsets), without loading images when possible."""
    if isinstance(ds, Subset):
        return train_labels(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, TensorDataset):
        return ds.tensors[1].numpy().astype(np.int64)
    for attr in ("targets", "labels"):
        labels = getattr(ds, attr, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)
