"""Shared test helpers: fake STL-10 files in the genuine binary layout, tiny configs."""
from pathlib import Path

import numpy as np
import pytest
import torch

from maehelpers.config import make_config


def write_fake_stl10(root, n_unlabeled=64, n_train=40, n_test=40, seed=0) -> dict:
    """Write stl10_binary/ under root exactly as STL-10 lays it out: uint8 images of 3x96x96 stored
    column-major, labels 1..10 in {split}_y.bin, class_names.txt and fold_indices.txt.
    Returns the (N, 3, 96, 96) row-major images and 0-based labels that the files encode."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, n in (("unlabeled", n_unlabeled), ("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        imgs[:, 0, :, :] = np.arange(96, dtype=np.uint8)[:, None]  # red channel = row index: catches a
        (folder / f"{split}_X.bin").write_bytes(imgs.transpose(0, 1, 3, 2).tobytes())  # missed transpose
        labels = None
        if split != "unlabeled":
            labels = np.arange(n) % 10
            (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        truth[split] = (imgs, labels)
    (folder / "class_names.txt").write_text(
        "\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    (folder / "fold_indices.txt").write_text(
        "\n".join(" ".join(str(i) for i in range(k, n_train, 10)) for k in range(10)) + "\n")
    return truth


@pytest.fixture
def stl10_root(tmp_path):
    truth = write_fake_stl10(tmp_path / "data")
    return tmp_path / "data", truth


@pytest.fixture
def smoke_cfg():
    return make_config("original", "smoke", "synthetic", seed=0)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
