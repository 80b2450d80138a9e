import gzip
import struct

import numpy as np
import pytest
import torch

from maehelpers.data import (DataError, FASHION_SYSTEM_DIR, augment, denormalize, load_dataset, normalize, prepare,
                             read_idx)


def test_stl10_reader_reads_generated_binary_layout(stl10_root):
    root, truth = stl10_root
    train = load_dataset("stl10", "train", root, download=False)
    imgs, labels = truth["train"]
    assert train.images.dtype == torch.uint8 and train.images.shape == (40, 3, 96, 96)
    assert torch.equal(train.images, torch.from_numpy(imgs))           # column-major undone
    assert torch.equal(train.images[0, 0, :, 0], torch.arange(96, dtype=torch.uint8))
    assert torch.equal(train.labels, torch.from_numpy(labels))           # 1..10 -> 0..9
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    unlabeled = load_dataset("stl10", "pretrain", root, download=False)
    assert len(unlabeled) == 64 and unlabeled.labels is None
    assert len(load_dataset("stl10", "test", root, download=False, max_images=7)) == 7


def test_stl10_missing_and_truncated_files_say_what_to_do(tmp_path, stl10_root):
    with pytest.raises(DataError, match="stl10_binary.*fashion_mnist"):
        load_dataset("stl10", "train", tmp_path / "nowhere", download=False)
    root, _ = stl10_root
    x = root / "stl10_binary" / "test_X.bin"
    x.write_bytes(x.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_dataset("stl10", "test", root, download=False)


def _write_idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    data = load_dataset("fashion_mnist", "test", tmp_path, download=False)
    assert data.images.shape == (5, 1, 28, 28) and torch.equal(data.labels, torch.arange(5))
    assert torch.equal(data.images[:, 0], torch.from_numpy(imgs.astype(np.uint8)))
    assert np.array_equal(read_idx(raw / "t10k-labels-idx1-ubyte.gz"), np.arange(5))


@pytest.mark.skipif(not FASHION_SYSTEM_DIR.exists(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    test = load_dataset("fashion_mnist", "test", tmp_path, download=False)
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.bincount().tolist() == [1000] * 10


def test_image_folder(tmp_path):
    from PIL import Image
    for cls in ("cats", "dogs"):
        (tmp_path / "pics" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40 + 10 * i, 30), (i * 50, 0, 200)).save(tmp_path / "pics" / cls / f"{i}.png")
    data = load_dataset("folder", "train", tmp_path / "pics")
    assert data.images.shape == (6, 3, 96, 96) and data.classes == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    (tmp_path / "pics" / "dogs" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset("folder", "train", tmp_path / "pics")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset("folder", "train", tmp_path / "empty")


def test_batched_augmentation_and_one_normalisation():
    data = load_dataset("synthetic", "train")
    g = torch.Generator().manual_seed(0)
    x = augment(data.images[:8], 48, generator=g)
    assert x.shape == (8, 3, 48, 48) and x.dtype == torch.float32
    y = augment(data.images[:8], 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, y)                                             # seeded: reproducible
    assert 0 <= denormalize(x).min() and denormalize(x).max() <= 1
    # full-scale crop with no flip is the resized image: check through a scale=(1, 1), ratio=1 crop
    u8 = data.images[:4]
    same = augment(u8, 32, scale=(1, 1), ratio=(1, 1), generator=torch.Generator().manual_seed(3))
    plain = prepare(u8, 32)
    flipped = plain.flip(-1)
    for a, b, c in zip(same, plain, flipped):
        assert torch.allclose(a, b, atol=1e-4) or torch.allclose(a, c, atol=1e-4)
    # normalisation round trip, grayscale expanded to 3 channels
    gray = torch.rand(2, 1, 8, 8)
    assert normalize(gray).shape == (2, 3, 8, 8)
    assert torch.allclose(denormalize(normalize(gray)), gray.expand(-1, 3, -1, -1), atol=1e-6)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="valid datasets"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="valid: pretrain"):
        load_dataset("synthetic", "val")


def test_empty_stl10_label_file_is_a_clear_error(stl10_root):
    root, _ = stl10_root
    (root / "stl10_binary" / "train_y.bin").write_bytes(b"")
    with pytest.raises(DataError, match="0 labels for 40 images"):
        load_dataset("stl10", "train", root, download=False)


def test_pictures_beside_class_folders_are_refused_for_labelled_splits(tmp_path):
    from PIL import Image
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / cls / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match="loose.png.*no class"):
        load_dataset("folder", "train", tmp_path)
    assert len(load_dataset("folder", "pretrain", tmp_path)) == 3


def test_random_resized_crop_really_crops():
    # a horizontal ramp: a crop narrower than the image spans a narrower range of values
    ramp = torch.linspace(0, 255, 64).round().to(torch.uint8).expand(16, 1, 64, 64).contiguous()
    full = denormalize(augment(ramp, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)))
    small = denormalize(augment(ramp, 32, scale=(0.1, 0.1), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0)))
    span = lambda x: (x[:, 0, 0].amax(1) - x[:, 0, 0].amin(1))  # noqa: E731
    assert (span(full) > 0.9).all()
    assert (span(small) < 0.4).all()                              # sqrt(0.1) ~ 0.32 of the width
    assert len({round(v, 3) for v in small[:, 0, 0, 16].tolist()}) > 4   # different crops per image
