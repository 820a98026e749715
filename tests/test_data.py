"""Data sets: digits splits and constants, CIFAR-10 / SVHN on tiny files in the real format."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.svhn
import torchvision.datasets.utils
from torch.utils.data import Subset
from torchvision import transforms

from zskt_ray.data import (
    DATASETS,
    DataSplits,
    dataset_info,
    load_dataset,
    make_loader,
    train_labels,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test on any download or socket connection."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    for module in (
        torchvision.datasets.cifar,
        torchvision.datasets.svhn,
        torchvision.datasets.utils,
    ):
        for fn in ("download_url", "download_and_extract_archive"):
            if hasattr(module, fn):
                monkeypatch.setattr(module, fn, fail)
    monkeypatch.setattr(socket.socket, "connect", fail)


# ------------------------------------------------------------------------------- dataset_info


def test_dataset_info_known() -> None:
    assert DATASETS == ("digits", "cifar10", "svhn", "toy2d")
    for name in DATASETS:
        info = dataset_info(name)
        assert info.name == name and info.num_classes == (3 if name == "toy2d" else 10)
        assert len(info.mean) == len(info.std) == info.in_channels
    assert (dataset_info("digits").in_channels, dataset_info("digits").image_size) == (1, 8)
    assert dataset_info("cifar10").mean == CIFAR_MEAN and dataset_info("cifar10").std == CIFAR_STD
    assert dataset_info("svhn").mean == SVHN_MEAN and dataset_info("svhn").std == SVHN_STD
    assert dataset_info("svhn").image_size == 32 and dataset_info("svhn").in_channels == 3


def test_dataset_info_unknown() -> None:
    with pytest.raises(ValueError, match="mnist") as err:
        dataset_info("mnist")
    assert "cifar10" in str(err.value)
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")


# ------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_dataset("digits")


def _indices(ds: Subset) -> np.ndarray:
    return np.asarray(ds.indices)


def test_digits_shapes_and_sizes(digits: DataSplits) -> None:
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert isinstance(y, int)
    sizes = (len(digits.train), len(digits.val), len(digits.test))
    assert sizes == (1257, 180, 360)
    assert sum(sizes) == 1797
    assert set(train_labels(digits.train).tolist()) == set(range(10))


def test_digits_splits_disjoint_and_deterministic(digits: DataSplits) -> None:
    tr, va, te = (_indices(s) for s in (digits.train, digits.val, digits.test))
    assert len(set(tr) | set(va) | set(te)) == 1797
    again = load_dataset("digits", split_seed=123)  # the digits splits ignore the seed
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert np.array_equal(_indices(a), _indices(b))
        xa = torch.stack([a[i][0] for i in range(len(a))])
        xb = torch.stack([b[i][0] for i in range(len(b))])
        assert torch.equal(xa, xb)


def test_digits_normalisation_constants(digits: DataSplits) -> None:
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images / 16.0).float()[:, None]  # native 8x8
    assert raw.shape[-2:] == (digits.info.image_size,) * 2
    train = raw[_indices(digits.train)].double()
    info = digits.info
    assert info.mean[0] == pytest.approx(train.mean().item(), abs=1e-3)
    assert info.std[0] == pytest.approx(train.std(unbiased=False).item(), abs=1e-3)
    # ... and the images come out normalised with them.
    x = torch.stack([digits.train[i][0] for i in range(len(digits.train))]).double()
    assert abs(x.mean().item()) < 3e-3 and abs(x.std().item() - 1) < 3e-3
    assert torch.allclose(x.float(), ((train - info.mean[0]) / info.std[0]).float(), atol=1e-5)


def test_digits_stratified(digits: DataSplits) -> None:
    everything = np.concatenate([train_labels(s) for s in (digits.train, digits.val, digits.test)])
    overall = np.bincount(everything, minlength=10) / len(everything)
    for split in (digits.train, digits.val, digits.test):
        share = np.bincount(train_labels(split), minlength=10) / len(split)
        assert np.abs(share - overall).max() < 0.01


def test_digits_val_fraction() -> None:
    splits = load_dataset("digits", val_fraction=0.25)
    assert len(splits.test) == 360
    assert len(splits.val) == round(0.25 * 1437) and len(splits.train) == 1437 - len(splits.val)
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)


# ------------------------------------------------------------------------------------ CIFAR-10

N_PER_BATCH, N_TEST = 4, 6


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_tiny_cifar(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10 in its on-disk format: pickled dicts, rows of 1024 R then G then B values."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = N_TEST if name == "test_batch" else N_PER_BATCH
        data = _cifar_images(rng, n)
        labels = [int(v) for v in (np.arange(n) + k) % 10]
        entry = {
            "batch_label": f"{name} of 6",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{k}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        written[name] = (data, labels)
    meta = {
        "label_names": ["airplane", "automobile", "bird", "cat", "deer"]
        + ["dog", "frog", "horse", "ship", "truck"],
        "num_cases_per_batch": N_PER_BATCH,
        "num_vis": 3072,
    }
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    return tmp_path, write_tiny_cifar(tmp_path)


def _base_index(ds: object, i: int) -> int:
    return int(ds.indices[i]) if isinstance(ds, Subset) else i


def test_cifar_shapes_labels_and_splits(tiny_cifar, no_network) -> None:
    root, written = tiny_cifar
    splits = load_dataset("cifar10", root=root, val_fraction=0.25)
    n_train = 5 * N_PER_BATCH
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, N_TEST)
    assert set(splits.train.indices).isdisjoint(splits.val.indices)
    assert sorted(splits.train.indices + splits.val.indices) == list(range(n_train))

    all_train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train_labels(splits.train).tolist() == [
        all_train_labels[i] for i in splits.train.indices
    ]
    assert train_labels(splits.val).tolist() == [all_train_labels[i] for i in splits.val.indices]
    assert train_labels(splits.test).tolist() == written["test_batch"][1]
    for ds in (splits.train, splits.val, splits.test):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)

    # The same seed gives the same carve; another seed another one.
    again = load_dataset("cifar10", root=root, val_fraction=0.25)
    assert again.val.indices == splits.val.indices
    other = load_dataset("cifar10", root=root, val_fraction=0.25, split_seed=1)
    assert other.val.indices != splits.val.indices


def test_cifar_pixel_values(tiny_cifar, no_network) -> None:
    root, written = tiny_cifar
    splits = load_dataset("cifar10", root=root, val_fraction=0.25)
    rows = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    # Green channel, row 5, column 7 of the first validation image, normalised by hand.
    i = _base_index(splits.val, 0)
    value = int(rows[i, 1 * 1024 + 5 * 32 + 7])
    expected = (value / 255 - 0.4822) / 0.1994
    assert splits.val[0][0][1, 5, 7].item() == pytest.approx(expected, abs=1e-5)
    # Blue channel, row 31, column 0 of test image 3.
    value = int(written["test_batch"][0][3, 2 * 1024 + 31 * 32 + 0])
    expected = (value / 255 - 0.4465) / 0.2010
    assert splits.test[3][0][2, 31, 0].item() == pytest.approx(expected, abs=1e-5)


def test_cifar_matches_torchvision_pipeline(tiny_cifar, no_network) -> None:
    """The batched fast path equals torchvision's ToTensor + Normalize on its PIL images."""
    root, _ = tiny_cifar
    splits = load_dataset("cifar10", root=root, val_fraction=0.25)
    reference = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    base = splits.test
    reference.data, reference.targets = base.data, list(base.targets)
    reference.transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    reference.target_transform = None
    for i in range(N_TEST):
        x_ref, y_ref = reference[i]
        x, y = base[i]
        assert y == y_ref
        assert torch.allclose(x, x_ref, atol=1e-6)


def _crop_flip_candidates(plain: torch.Tensor, fill: torch.Tensor) -> list[torch.Tensor]:
    padded = fill.view(3, 1, 1).expand(3, 40, 40).clone()
    padded[:, 4:36, 4:36] = plain
    crops = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    return crops + [c.flip(-1) for c in crops]


def test_cifar_augment_only_on_train(tiny_cifar, no_network) -> None:
    root, _ = tiny_cifar
    aug = load_dataset("cifar10", root=root, augment=True, val_fraction=0.25)
    plain = load_dataset("cifar10", root=root, augment=False, val_fraction=0.25)
    # Validation and test never change, and equal the un-augmented images.
    torch.manual_seed(0)
    for ds_aug, ds_plain in ((aug.val, plain.val), (aug.test, plain.test)):
        for i in range(len(ds_aug)):
            assert torch.equal(ds_aug[i][0], ds_plain[i][0])
            assert torch.equal(ds_aug[i][0], ds_aug[i][0])
    # Without augment the training images are deterministic too.
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    # With augment every training image is a zero-padded crop (pad 4), maybe flipped, of the
    # original, and repeated draws differ.
    fill = -torch.tensor(CIFAR_MEAN) / torch.tensor(CIFAR_STD)  # a zero pixel, normalised
    torch.manual_seed(0)
    draws = [aug.train[0][0] for _ in range(20)]
    candidates = _crop_flip_candidates(plain.train[0][0], fill)
    for x in draws:
        assert any(torch.allclose(x, c, atol=1e-6) for c in candidates)
    assert len({x.numpy().tobytes() for x in draws}) > 1
    # The loader (batched path) agrees.
    torch.manual_seed(1)
    xb, yb = next(iter(make_loader(aug.train, batch_size=15, shuffle=False)))
    assert xb.shape == (15, 3, 32, 32) and yb.dtype == torch.int64
    for k in range(15):
        cands = _crop_flip_candidates(plain.train[k][0], fill)
        assert any(torch.allclose(xb[k], c, atol=1e-6) for c in cands)
    assert yb.tolist() == train_labels(plain.train).tolist()


def test_cifar_val_too_large(tiny_cifar, no_network) -> None:
    root, _ = tiny_cifar
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("cifar10", root=root)  # default 5,000 validation images > 20


# ---------------------------------------------------------------------------------------- SVHN


def tiny_svhn_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's .mat layout: X is 32 x 32 x 3 x N uint8, y is N x 1 with 10 for the digit 0."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # labels 1..10
    return x, y


@pytest.fixture
def tiny_svhn(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    folder = tmp_path / "svhn"
    folder.mkdir()
    written = {}
    for split, n, seed in (("train", 20, 0), ("test", 12, 1)):
        x, y = tiny_svhn_arrays(n, seed)
        scipy.io.savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y)
    return tmp_path, written


def test_svhn(tiny_svhn, no_network) -> None:
    root, written = tiny_svhn
    splits = load_dataset("svhn", root=root, val_fraction=0.2, augment=True)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 12)
    assert set(splits.train.indices).isdisjoint(splits.val.indices)

    x_test, y_test = written["test"]
    expected_labels = np.where(y_test[:, 0] == 10, 0, y_test[:, 0])
    assert train_labels(splits.test).tolist() == expected_labels.tolist()
    assert y_test[9, 0] == 10 and splits.test[9][1] == 0  # SVHN's 10 is the digit 0
    assert set(train_labels(splits.test).tolist()) == set(range(10))
    for k in range(12):
        img, label = splits.test[k]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert label == int(expected_labels[k])
    # Pixel (row 3, column 17, red) of test image 4, normalised by hand.
    expected = (int(x_test[3, 17, 0, 4]) / 255 - 0.4377) / 0.1980
    assert splits.test[4][0][0, 3, 17].item() == pytest.approx(expected, abs=1e-5)
    # Green, row 0, column 31 of the first validation image.
    x_train, y_train = written["train"]
    i = splits.val.indices[0]
    expected = (int(x_train[0, 31, 1, i]) / 255 - 0.4438) / 0.2010
    assert splits.val[0][0][1, 0, 31].item() == pytest.approx(expected, abs=1e-5)
    assert splits.val[0][1] == int(y_train[i, 0]) % 10
    # No augmentation for SVHN, even when asked.
    assert torch.equal(splits.train[0][0], splits.train[0][0])


# ------------------------------------------------------------------------------ missing files


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_missing_files(tmp_path: Path, name: str, no_network) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(name, root=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert name in message and "download" in message
    assert str(tmp_path.resolve()) in message


def test_partial_cifar_is_missing(tiny_cifar, no_network) -> None:
    root, _ = tiny_cifar
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", root=root, val_fraction=0.25)


def test_download_only_when_asked(tiny_cifar, monkeypatch: pytest.MonkeyPatch) -> None:
    """download=True verifies md5 sums (ours are fake) and so calls the downloader."""
    root, _ = tiny_cifar
    calls = []

    def fake_download(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise RuntimeError("fake download")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fake_download)
    load_dataset("cifar10", root=root, val_fraction=0.25)
    assert calls == []
    with pytest.raises(RuntimeError, match="fake download"):
        load_dataset("cifar10", root=root, download=True, val_fraction=0.25)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------ loaders


def test_make_loader_seeded_order(digits: DataSplits) -> None:
    def order(seed: int) -> list[int]:
        loader = make_loader(digits.val, batch_size=32, shuffle=True, seed=seed)
        return torch.cat([y for _, y in loader]).tolist() + [int(x.sum() * 1000) for x, _ in loader]

    assert order(3) == order(3)
    assert order(3) != order(4)
    loader = make_loader(digits.val, batch_size=32, shuffle=False, drop_last=True)
    batches = list(loader)
    assert len(batches) == 180 // 32
    assert batches[0][0].shape == (32, 1, 8, 8) and batches[0][1].dtype == torch.int64
    assert batches[0][1].tolist() == train_labels(digits.val)[:32].tolist()


def test_train_labels_nested_subset(digits: DataSplits) -> None:
    nested = Subset(digits.train, [5, 0, 7])
    labels = train_labels(nested)
    assert labels.dtype == np.int64
    assert labels.tolist() == [digits.train[i][1] for i in (5, 0, 7)]
