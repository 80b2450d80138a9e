"""Datasets as uint8 tensors, and batched augmentation on the training device.

Every loader returns an `ImageSet`: images as a uint8 tensor (N, C, H, W) with C = 1 or 3, labels
(N,) int64 in 0..K-1 (or None for unlabeled data) and class names. Images stay uint8 until a batch
is drawn; crop, flip, resize and normalisation then run on the whole batch on the device.

One input normalisation (ImageNet mean/std, as the official MAE) is used for pretraining, probing,
fine-tuning and display: `normalize` / `denormalize` below are the only places it lives.

STL-10 is read straight from its documented binary layout (uint8, each image 3x96x96 stored
column-major; labels 1..10) with numpy memory maps, so loading costs nothing and no per-load MD5
check runs; the archive's checksum is checked once, after download, by torchvision's downloader.
"""
import contextlib
import fcntl
import functools
import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("pretrain", "train", "test")


class DataError(RuntimeError):
    """A dataset is missing or malformed; the message says what to do."""


@dataclass
class ImageSet:
    images: torch.Tensor          # uint8 (N, C, H, W); may be a view of a memory map
    labels: torch.Tensor | None   # int64 (N,) or None
    classes: list
    name: str

    def __len__(self):
        return self.images.shape[0]

    def head(self, n: int) -> "ImageSet":
        """The first n images (n = 0 keeps all)."""
        return self if not n or n >= len(self) else self.part(0, n)

    def part(self, start: int, stop: int) -> "ImageSet":
        """Images start .. stop - 1 (views, nothing copied)."""
        labels = None if self.labels is None else self.labels[start:stop]
        return ImageSet(self.images[start:stop], labels, self.classes, self.name)


# ----------------------------------------------------------------------------- STL-10
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
STL10_MD5 = "91f7769df0f17e558f3565bffb0c7dfb"
STL10_IMAGE_BYTES = 3 * 96 * 96
STL10_FILES = {"pretrain": "unlabeled", "train": "train", "test": "test"}


def read_stl10(folder, split: str) -> ImageSet:
    """Read `{split}_X.bin` (and `{split}_y.bin`) from an `stl10_binary` folder."""
    folder = Path(folder)
    x_path = folder / f"{split}_X.bin"
    size = x_path.stat().st_size
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise DataError(f"{x_path} has {size} bytes, not a multiple of {STL10_IMAGE_BYTES} (one 3x96x96 "
                        "image): the file is truncated or not STL-10. Delete it and download again.")
    n = size // STL10_IMAGE_BYTES
    raw = np.memmap(x_path, dtype=np.uint8, mode="c", shape=(n, 3, 96, 96))
    images = torch.from_numpy(raw).transpose(2, 3)  # stored column-major: swap to (N, C, H, W)
    labels = None
    y_path = folder / f"{split}_y.bin"
    if split != "unlabeled":
        y = np.fromfile(y_path, dtype=np.uint8)
        if len(y) != n or y.min(initial=1) < 1 or y.max(initial=10) > 10:
            found = f"{len(y)} labels" + (f" in {y.min()}..{y.max()}" if len(y) else "")
            raise DataError(f"{y_path} holds {found} for {n} images; STL-10 has one label in 1..10 per image: "
                            "the file is truncated or not STL-10. Delete it and download again.")
        labels = torch.from_numpy(y.astype(np.int64) - 1)
    names = folder / "class_names.txt"
    classes = names.read_text().split() if names.exists() else STL10_CLASSES
    return ImageSet(images, labels, classes, "stl10")


def load_stl10(root, split: str, download: bool = True) -> ImageSet:
    folder = Path(root) / "stl10_binary"
    name = STL10_FILES[split]
    needed = [folder / f"{name}_X.bin"] + ([] if name == "unlabeled" else [folder / f"{name}_y.bin"])
    if not all(p.exists() for p in needed) and download:
        try:
            from torchvision.datasets.utils import download_and_extract_archive
            download_and_extract_archive(STL10_URL, str(root), md5=STL10_MD5)
        except Exception as e:  # offline, or a broken download
            reason = f"the download failed ({type(e).__name__}: {str(e)[:200]})"
        else:
            reason = "the downloaded archive did not contain them"
    else:
        reason = "download=False"
    if not all(p.exists() for p in needed):
        raise DataError(
            f"STL-10 {split!r} files not found: {', '.join(str(p) for p in needed)}; {reason}. "
            f"Put the extracted stl10_binary/ folder (from {STL10_URL}) under {Path(root).resolve()}, "
            "or run where the network is reachable, or pick an offline dataset: "
            "--dataset fashion_mnist (Debian: apt-get install dataset-fashion-mnist) or --dataset synthetic.")
    return read_stl10(folder, name)


# ----------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path) -> np.ndarray:
    """Read an idx file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise DataError(f"{path} is empty or truncated")
    _, _, dtype, ndim = struct.unpack(">BBBB", data[:4])
    if dtype != 0x08:
        raise DataError(f"{path} is not a uint8 idx file")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes for shape {shape}: truncated. Reinstall or redownload.")
    return body.reshape(shape)


def load_fashion_mnist(root, split: str, download: bool = True) -> ImageSet:
    prefix = "t10k" if split == "test" else "train"
    candidates = [Path(root) / "FashionMNIST" / "raw", Path(root) / "fashion-mnist", FASHION_SYSTEM_DIR]
    for folder in candidates:
        for ext in ("", ".gz"):
            x, y = folder / f"{prefix}-images-idx3-ubyte{ext}", folder / f"{prefix}-labels-idx1-ubyte{ext}"
            if x.exists() and y.exists():
                images = torch.from_numpy(read_idx(x).copy()).unsqueeze(1)
                labels = torch.from_numpy(read_idx(y).astype(np.int64))
                return ImageSet(images, labels, FASHION_CLASSES, "fashion_mnist")
    if download:
        try:
            from torchvision.datasets import FashionMNIST
            FashionMNIST(str(root), train=split != "test", download=True)
            return load_fashion_mnist(root, split, download=False)
        except Exception as e:
            reason = f"the download failed ({type(e).__name__})"
    else:
        reason = "download=False"
    raise DataError(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}; {reason}. "
                    "On Debian/Ubuntu: apt-get install dataset-fashion-mnist.")


# ----------------------------------------------------------------------------- CIFAR-10
def load_cifar10(root, split: str, download: bool = True) -> ImageSet:
    from torchvision.datasets import CIFAR10
    try:
        ds = CIFAR10(str(root), train=split != "test", download=download)
    except Exception as e:
        raise DataError(f"CIFAR-10 not found under {Path(root).resolve()} and could not be downloaded "
                        f"({type(e).__name__}: {str(e)[:200]}).") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes), "cifar10")


# ----------------------------------------------------------------------------- your own pictures
def _images_in(folder: Path):
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_folder(root, split: str, size: int = 96) -> ImageSet:
    """Pictures under `root` (or `root/train`, `root/test` when those exist), resized to size x size.

    Sub-folders name the classes; pictures directly in the folder are unlabeled.
    """
    from PIL import Image, UnidentifiedImageError
    root = Path(root)
    sub = root / ("test" if split == "test" else "train")
    folder = sub if sub.is_dir() else root
    if split == "test" and folder == root:
        raise DataError(f"image folder {root} has no test/ sub-folder for the 'test' split")
    files = _images_in(folder) if folder.is_dir() else []
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder.resolve()}")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    loose = [p for p in files if p.parent == folder]
    if classes and loose and split != "pretrain":
        raise DataError(f"{len(loose)} pictures (e.g. {loose[0].name}) lie directly in {folder} beside the class "
                        f"folders {', '.join(classes[:5])}: they have no class. Move them into a class folder "
                        "or out of it; only pretraining may use unlabeled pictures.")
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                s = size / min(im.size)  # shorter side to `size`, then centre crop
                im = im.resize((max(size, round(im.width * s)), max(size, round(im.height * s))),
                               Image.BICUBIC)
                left, top = (im.width - size) // 2, (im.height - size) // 2
                images[i] = np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image {path}: {e}. Remove or replace that file.") from None
    labels = None
    if classes:
        labels = torch.tensor([classes.index(p.parent.name) if p.parent != folder else -1 for p in files])
    return ImageSet(torch.from_numpy(images), labels, classes, "folder")


# ----------------------------------------------------------------------------- synthetic data
def make_synthetic(split: str, n: int | None = None, size: int = 32, num_classes: int = 10) -> ImageSet:
    """Procedural, learnable images for tests and offline smoke runs: class k is a sinusoidal
    grating at angle k*180/K degrees, with random frequency, phase, colour and noise."""
    n = n or {"pretrain": 512, "train": 256, "test": 256}[split]
    g = torch.Generator().manual_seed({"pretrain": 0, "train": 1, "test": 2}[split])
    labels = torch.arange(n) % num_classes
    angle = labels.float() * torch.pi / num_classes
    freq = 2 * torch.pi * (2 + 2 * torch.rand(n, generator=g)) / size
    phase = 2 * torch.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    proj = xx * angle.cos().view(-1, 1, 1) + yy * angle.sin().view(-1, 1, 1)
    wave = torch.sin(freq.view(-1, 1, 1) * proj + phase.view(-1, 1, 1))            # (n, H, W)
    colour = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=g)
    img = 0.5 + 0.4 * wave.unsqueeze(1) * colour + 0.05 * torch.randn(n, 3, size, size, generator=g)
    images = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels, [f"angle{k}" for k in range(num_classes)], "synthetic")


# ----------------------------------------------------------------------------- one entry point
def load_dataset(name: str, split: str, root="data", download: bool = True, max_images: int = 0) -> ImageSet:
    """`split`: 'pretrain' (STL-10 unlabeled; the train split elsewhere), 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    loaders = {"stl10": lambda: load_stl10(root, split, download),
               "fashion_mnist": lambda: load_fashion_mnist(root, split, download),
               "cifar10": lambda: load_cifar10(root, split, download),
               "folder": lambda: load_folder(root, split),
               "synthetic": lambda: make_synthetic(split)}
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(loaders)}")
    data = loaders[name]().head(max_images)
    if split == "pretrain":  # pretraining never sees labels
        data = ImageSet(data.images, None, data.classes, data.name)
    return data


# ----------------------------------------------------------------------------- where the images live
def resident(images, device: torch.device, limit_bytes: int | None = None):
    """Keep the dataset on the GPU when it takes at most a third of the free GPU memory (STL-10's
    2.8 GB at 96 px fits a T4), so no step gathers a batch from host memory or a memory map."""
    if device.type != "cuda":
        return images
    limit = limit_bytes if limit_bytes is not None else torch.cuda.mem_get_info(device)[0] // 3
    return images.to(device) if images.numel() * images.element_size() <= limit else images



class PinnedGather:
    """Rows of host images (too large for the GPU, or memory-mapped) gathered into a pinned buffer and
    copied to the GPU without blocking. Two buffers take turns, each reused only once its last copy
    is done (an event), so the host gathers one batch while the GPU still copies the other."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        self.images, self.device, self.turn = images, device, 0
        self.buffers, self.events = [None, None], [None, None]

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        k, self.turn = self.turn, 1 - self.turn
        if self.events[k] is not None:
            self.events[k].synchronize()  # the copy from two batches ago, long finished in a training step
        if self.buffers[k] is None or len(self.buffers[k]) < len(idx):
            self.buffers[k] = torch.empty((len(idx), *self.images.shape[1:]), dtype=self.images.dtype).pin_memory()
        buf = self.buffers[k][:len(idx)]
        torch.index_select(self.images, 0, idx.cpu(), out=buf)
        out = buf.to(self.device, non_blocking=True)
        self.events[k] = torch.cuda.Event()
        self.events[k].record()
        return out


def gatherer(images: torch.Tensor, device: torch.device):
    """f(idx) -> those rows of `images` on `device`: plain indexing where the images already are on
    the device (or the device is the CPU); a PinnedGather for host images bound for a GPU."""
    if device.type != "cuda" or images.device.type == "cuda":
        return lambda idx: images[idx]
    return PinnedGather(images, device)


@contextlib.contextmanager
def download_lock(root):
    """Hold root/.download.lock (an flock; freed when the process ends): processes on one machine
    download and extract one at a time, so the first does the work and the others find the files."""
    Path(root).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(root) / ".download.lock", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def locked(several: bool, root, fn):
    """fn() under download_lock(root) when `several` processes may download at once, else fn(). Under
    torchrun the ranks wait for the first one's download on this lock, not in a collective, so no
    process-group timeout runs while a 2.6 GB archive downloads."""
    if not several:
        return fn()
    with download_lock(root):
        return fn()


# ----------------------------------------------------------------------------- batched transforms
@functools.lru_cache(maxsize=None)
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple:
    """ImageNet mean and std on the device, made once: a copy per batch would make the GPU wait."""
    return tuple(torch.tensor(v, dtype=dtype).view(1, 3, 1, 1).to(device) for v in (IMAGENET_MEAN, IMAGENET_STD))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1], (N, 1 or 3, H, W) -> model input (3 channels, ImageNet-normalised)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean, std = _mean_std(x.device, x.dtype)
    return (x - mean) / std


def _normalize_own(x: torch.Tensor) -> torch.Tensor:
    """normalize() in place, for a tensor made just now (same values, no second copy in memory)."""
    if x.shape[1] != 3:
        return normalize(x)
    mean, std = _mean_std(x.device, x.dtype)
    return x.sub_(mean).div_(std)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Model input space -> display pixels in [0, 1] (clamped)."""
    mean, std = _mean_std(x.device, x.dtype)
    return (x * std + mean).clamp(0, 1)


def prepare(images_u8: torch.Tensor, size: int, device=None) -> torch.Tensor:
    """Evaluation transform: the whole image resized to size x size, normalised."""
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _normalize_own(x)


def augment(images_u8: torch.Tensor, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
            generator: torch.Generator | None = None, device=None, rows: slice | None = None,
            batch: int | None = None, normalized: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) + horizontal flip on a whole batch, then normalise
    (normalized=False: pixels in [0, 1], for augmentations that follow).

    One affine grid per image and one `grid_sample` (bilinear) for the batch. Unlike torchvision's
    ten-trial rejection sampling, a crop that would not fit is clipped to the image.
    rows, batch: `images_u8` are rows `rows` of a batch of `batch` images. The crops of the whole
    batch are drawn (so a row's crop does not depend on how the batch is split over processes or
    micro-batches) and only these rows are resampled.
    """
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    n, dev, rows = batch or x.shape[0], x.device, rows or slice(None)

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=generator, device=dev)

    area = uniform(*scale)
    log_r = uniform(float(np.log(ratio[0])), float(np.log(ratio[1])))
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)   # crop width and height as fractions of the image
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = uniform(0, 1) * (1 - w) + w / 2       # crop centre, kept inside the image
    cy = uniform(0, 1) * (1 - h) + h / 2
    flip = torch.where(torch.rand(n, generator=generator, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = F.affine_grid(theta[rows], [x.shape[0], x.shape[1], size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _normalize_own(x) if normalized else x


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of one epoch, a pure function of (seed, epoch) so resume is exact."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)
