"""Real image data: Fashion-MNIST (default), CIFAR-10 (python format) and ImageFolder trees.

Nothing is downloaded. Every dataset yields uint8 images (H, W, C) and int64 labels;
normalisation and resizing happen on batches (:mod:`edgesplit.data.transforms`), so
the same :class:`Preprocess` record travels into the ONNX manifest and the workers.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from edgesplit.data.idx import read_idx
from edgesplit.errors import EdgesplitError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
VAL_SPLIT_SEED = 0  # the train/validation split never depends on the training seed


class ImageDataset(Protocol):
    classes: list[str]

    def __len__(self) -> int: ...
    def images(self, idx: np.ndarray) -> np.ndarray: ...  # (B, H, W, C) uint8
    def labels(self, idx: np.ndarray) -> np.ndarray: ...  # (B,) int64


@dataclass
class ArrayDataset:
    """Images held in memory: ``data`` (N, H, W, C) uint8, ``targets`` (N,) int64."""

    data: np.ndarray
    targets: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return self.data[idx]

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.targets[idx]

    def subset(self, idx: np.ndarray) -> "ArrayDataset":
        return ArrayDataset(self.data[idx], self.targets[idx], self.classes, self.mean, self.std)

    @property
    def image_shape(self) -> tuple[int, int, int]:  # (C, H, W)
        n, h, w, c = self.data.shape
        return (c, h, w)


class ImageFolderDataset:
    """``root/CLASS/*.jpg`` (ImageNet-style), read lazily and resized to ``size`` (H, W) on load."""

    def __init__(self, root: str | Path, size: Sequence[int] = (224, 224), in_chans: int = 3):
        root = Path(root)
        if not root.is_dir():
            raise EdgesplitError(f"image folder {root} does not exist; pass a directory with one sub-folder per class")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.paths: list[Path] = []
        targets = []
        for label, cls in enumerate(self.classes):
            files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            self.paths += files
            targets += [label] * len(files)
        if not self.paths:
            raise EdgesplitError(f"no images found under {root}; expected {root}/CLASS/*.jpg|png")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.size = tuple(size)
        self.in_chans = in_chans
        self.mean = (0.485, 0.456, 0.406)[:in_chans] if in_chans == 3 else (0.5,) * in_chans
        self.std = (0.229, 0.224, 0.225)[:in_chans] if in_chans == 3 else (0.5,) * in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def images(self, idx: np.ndarray) -> np.ndarray:
        return np.stack([load_image(self.paths[i], self.size, self.in_chans) for i in np.atleast_1d(idx)])

    def labels(self, idx: np.ndarray) -> np.ndarray:
        return self.targets[idx]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, *self.size)


def load_image(path: str | Path, size: Sequence[int], in_chans: int) -> np.ndarray:
    """One image file as (H, W, C) uint8 at ``size`` (H, W); grey when ``in_chans == 1``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_chans == 1 else "RGB").resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise EdgesplitError(f"cannot read image {path}: {err}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def conversion_note(path: str | Path, size: Sequence[int], in_chans: int) -> str | None:
    """What :func:`load_image` does to ``path`` beyond reading it (greying, resizing, squashing), in words; None
    when the file already is what the model takes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h, mode = img.width, img.height, img.mode
    except (OSError, UnidentifiedImageError):
        return None  # load_image says what is wrong
    done = []
    if in_chans == 1 and mode not in ("L", "1", "I;16", "I", "F"):
        done.append(f"converted from {mode} to grey")
    if (h, w) != tuple(size):
        squash = " (squashed: the aspect ratio is not kept)" if abs(w / h - size[1] / size[0]) > 0.01 else ""
        done.append(f"resized from {w}x{h} to {size[1]}x{size[0]}{squash}")
    return f"{path}: {' and '.join(done)}, as the model takes" if done else None


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise EdgesplitError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install it with "
        f"`sudo apt-get install dataset-fashion-mnist` or pass --data-dir"
    )


def load_fashion_mnist(split: str, data_dir: str | Path | None = None) -> ArrayDataset:
    """``split``: ``train`` (60,000) or ``test`` (10,000); 1x28x28 grey images."""
    directory = Path(data_dir) if data_dir else FASHION_MNIST_DIR
    if not directory.is_dir():
        raise EdgesplitError(
            f"Fashion-MNIST directory {directory} does not exist; run `sudo apt-get install dataset-fashion-mnist` "
            f"or pass --data-dir DIR"
        )
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or len(images) != len(labels):
        raise EdgesplitError(f"Fashion-MNIST files in {directory} do not match (images {images.shape}, labels {labels.shape})")
    return ArrayDataset(images[..., None], labels.astype(np.int64), FASHION_MNIST_CLASSES, (0.2860,), (0.3530,))


def load_cifar10(split: str, data_dir: str | Path) -> ArrayDataset:
    """CIFAR-10 in its python format (``cifar-10-batches-py``). The pickles are the
    dataset's own format: only load files you trust."""
    directory = Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for name in names:
        path = directory / name
        if not path.exists():
            raise EdgesplitError(f"CIFAR-10 file {path} not found; pass --data-dir pointing at cifar-10-batches-py")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    return ArrayDataset(
        np.concatenate(data), np.concatenate(labels), CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    )


DATASETS = ("fashion-mnist", "cifar10", "imagefolder")


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, size: Sequence[int] = (224, 224), in_chans: int = 3):
    """``name`` in :data:`DATASETS`; ``split`` in train/test. ImageFolder expects ``data_dir/{train,test}``."""
    if split not in ("train", "test"):
        raise EdgesplitError(f"unknown split {split!r}; use train or test")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "cifar10":
        if not data_dir:
            raise EdgesplitError("CIFAR-10 needs --data-dir pointing at cifar-10-batches-py (nothing is downloaded)")
        return load_cifar10(split, data_dir)
    if name == "imagefolder":
        if not data_dir:
            raise EdgesplitError("imagefolder needs --data-dir DIR with DIR/train/CLASS/*.jpg and DIR/test/CLASS/*.jpg")
        return ImageFolderDataset(Path(data_dir) / split, size, in_chans)
    raise EdgesplitError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def train_val_split(n: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of ``range(n)`` (fixed seed, independent of the training seed)."""
    if not 0 <= val_size < n:
        raise EdgesplitError(f"validation size {val_size} must be between 0 and {n - 1}")
    perm = np.random.default_rng(VAL_SPLIT_SEED).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])
