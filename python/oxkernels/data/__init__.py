"""MNIST and CIFAR-10 from their official distribution files: download, verify, cache, load.

    ds = MNIST(train=True)          # or CIFAR10(train=False, root="/data")
    ds.images   # uint8 (N, C, H, W): a torch tensor when torch is installed, else a NumPy array
    ds.labels   # int64 (N,)
    ds.classes  # class names

Layout under the data root (the `root` argument, else $OXKERNELS_DATA, else
~/.cache/oxkernels):

    mnist/train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
          t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz
    cifar10/cifar-10-batches-bin/data_batch_1.bin ... data_batch_5.bin, test_batch.bin,
                                 batches.meta.txt

Every file is checked against its published sha256 before it is parsed (a file
that fails is never read). Missing files are downloaded from the mirrors in
MNIST_MIRRORS / CIFAR10_MIRRORS, tried in order; downloads go to a temporary
file that is renamed only after its checksum matched, so an interrupted
download never leaves a file that looks complete. CIFAR-10 comes as the
official cifar-10-binary.tar.gz (md5-checked, then only the expected members are
extracted, each checked by sha256). No pickle anywhere.

`DeviceBatches` draws normalised batches from a whole data set held on the
device (no DataLoader, no PIL), with a seeded shuffle per epoch.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ._batches import DeviceBatches, epoch_order, normalisation
from ._download import ChecksumError, DownloadError, extract_members, fetch_from_mirrors, file_digest, verify_file

__all__ = [
    "MNIST", "CIFAR10", "SyntheticDataset", "DeviceBatches", "epoch_order", "normalisation",
    "load_dataset", "data_root",
    "DatasetNotFoundError", "ChecksumError", "DownloadError",
    "MNIST_MIRRORS", "CIFAR10_MIRRORS",
]

# Mirrors, tried in order. Each MNIST mirror is a folder URL holding the four .gz files;
# each CIFAR-10 mirror is the full URL of cifar-10-binary.tar.gz. Tests replace these
# (module variables, or the `mirrors=` argument) with a local server.
MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
CIFAR10_MIRRORS = [
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
]

# Published checksums (see shared/data/README.md for where each comes from).
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_FILES = {
    "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
    "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
    "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
    "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
    "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
    "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    "batches.meta.txt": "558e74b5e208382e186da55784b4bac2cd52e558448e1b5800990fdb28ed8033",
}
CIFAR10_TARBALL = "cifar-10-binary.tar.gz"
CIFAR10_TARBALL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"

MNIST_CLASSES = [str(d) for d in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class DatasetNotFoundError(FileNotFoundError):
    """The data files are missing and could not be downloaded."""


def data_root(root=None) -> Path:
    """The data folder: `root`, else $OXKERNELS_DATA, else ~/.cache/oxkernels."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("OXKERNELS_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "oxkernels"


def _extract_cifar10(tarball: Path, folder: Path) -> None:
    """The official tarball's data files, each checked by its sha256, into folder."""
    extract_members(tarball, folder, CIFAR10_DIR, CIFAR10_FILES)


# ---------------------------------------------------------------------------- parsing

def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse a gzipped idx file: big-endian int32 magic, ndim sizes, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    header = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if header[0] != magic:
        raise ValueError(f"{path}: idx magic {header[0]}, expected {magic}")
    shape = tuple(int(s) for s in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {data.size} data bytes, header says {shape}")
    return data.reshape(shape).copy()  # writable, owns its memory (the buffer is read-only bytes)


def _read_cifar_bin(path: Path):
    """Records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of the 3073-byte record")
    records = raw.reshape(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


# ---------------------------------------------------------------------------- data sets

class _Dataset:
    """Whole data set in memory. `images` uint8 (N, C, H, W) and `labels` int64 (N,) are
    torch tensors when torch is installed (and as_numpy is False), else NumPy arrays;
    `images_np` / `labels_np` are always the NumPy arrays (shared memory)."""

    name = ""
    classes: list = []
    mean: tuple = ()
    std: tuple = ()

    def __init__(self, root=None, train=True, download=True, mirrors=None, as_numpy=False):
        self.root = data_root(root)
        self.train = bool(train)
        self.folder = self._folder()
        self._ensure(download, mirrors)
        images, labels = self._load()
        self.images_np = np.ascontiguousarray(images)
        self.labels_np = np.ascontiguousarray(labels, dtype=np.int64)
        self.images, self.labels = self.images_np, self.labels_np
        if not as_numpy:
            try:
                import torch
            except ImportError:
                pass
            else:
                self.images = torch.from_numpy(self.images_np)
                self.labels = torch.from_numpy(self.labels_np)

    def __len__(self):
        return len(self.labels_np)

    def __repr__(self):
        split = "train" if self.train else "test"
        return f"{type(self).__name__}({split}, {len(self)} images {tuple(self.images_np.shape[1:])}, root={self.root})"

    def _missing(self) -> list:
        return [n for n in self._needed() if not (self.folder / n).is_file()]

    def _not_found(self, missing, why="") -> DatasetNotFoundError:
        return DatasetNotFoundError(
            f"{self.name} files not found in {self.folder} (missing: {', '.join(missing)}){why}.\n"
            f"Get them one of these ways: run with download=True on a machine with internet access "
            f"(e.g. `oxkernels train {self.name.lower()}`); copy the official files into that folder; "
            f"or set OXKERNELS_DATA (or pass root=) to a folder holding {self._layout_hint()}."
        )

    def _ensure(self, download, mirrors):
        missing = self._missing()
        if missing and not download:
            raise self._not_found(missing, " and download=False")
        if missing:
            try:
                self._download(missing, mirrors)
            except DownloadError as e:
                raise self._not_found(missing, f"; downloading failed:\n{e}\n") from e
        for name in self._needed():
            verify_file(self.folder / name, self._files()[name])


class MNIST(_Dataset):
    """MNIST digits: (N, 1, 28, 28) uint8 images, int64 labels 0-9."""

    name = "MNIST"
    classes = MNIST_CLASSES
    mean = (0.1307,)
    std = (0.3081,)

    def _folder(self):
        return self.root / "mnist"

    def _layout_hint(self):
        return "mnist/" + ", mnist/".join(MNIST_FILES)

    def _files(self):
        return MNIST_FILES

    def _needed(self):
        prefix = "train" if self.train else "t10k"
        return [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"]

    def _download(self, missing, mirrors):
        urls = list(mirrors if mirrors is not None else MNIST_MIRRORS)
        for name in missing:
            fetch_from_mirrors([u.rstrip("/") + "/" + name for u in urls],
                                self.folder / name, "sha256", MNIST_FILES[name])

    def _load(self):
        images_file, labels_file = (self.folder / n for n in self._needed())
        images = _read_idx(images_file, 2051, 3)
        labels = _read_idx(labels_file, 2049, 1)
        if len(images) != len(labels):
            raise ValueError(f"{self.folder}: {len(images)} images but {len(labels)} labels")
        return images[:, None, :, :], labels


class CIFAR10(_Dataset):
    """CIFAR-10: (N, 3, 32, 32) uint8 images (RGB planes), int64 labels 0-9."""

    name = "CIFAR10"
    classes = CIFAR10_CLASSES
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def _folder(self):
        return self.root / "cifar10" / CIFAR10_DIR

    def _layout_hint(self):
        return f"cifar10/{CIFAR10_DIR}/ (data_batch_1.bin ... data_batch_5.bin, test_batch.bin, batches.meta.txt)"

    def _files(self):
        return CIFAR10_FILES

    def _needed(self):
        batches = [f"data_batch_{i}.bin" for i in range(1, 6)] if self.train else ["test_batch.bin"]
        return batches + ["batches.meta.txt"]

    def _download(self, missing, mirrors):
        urls = list(mirrors if mirrors is not None else CIFAR10_MIRRORS)
        tarball = self.root / "cifar10" / CIFAR10_TARBALL
        if not tarball.is_file():
            fetch_from_mirrors(urls, tarball, "md5", CIFAR10_TARBALL_MD5)
        elif file_digest(tarball, "md5") != CIFAR10_TARBALL_MD5:
            raise ChecksumError(f"{tarball} does not match its published md5 {CIFAR10_TARBALL_MD5}; delete it")
        _extract_cifar10(tarball, self.folder)
        tarball.unlink()

    def _load(self):
        meta = (self.folder / "batches.meta.txt").read_text().split()
        if meta != CIFAR10_CLASSES:
            raise ValueError(f"{self.folder}/batches.meta.txt lists {meta}, expected {CIFAR10_CLASSES}")
        parts = [_read_cifar_bin(self.folder / n) for n in self._needed()[:-1]]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


DATASETS = {"mnist": MNIST, "cifar10": CIFAR10}
_SPLIT_SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000)}


class SyntheticDataset(_Dataset):
    """Random images and labels with a real data set's shapes, sizes, classes and
    normalisation, built in memory without files: for timing where the files are not
    (a GPU machine without them, say). Training on it measures speed, not learning."""

    def __init__(self, name: str, train=True, seed=0):  # noqa: D107 - no files, no super().__init__
        real = DATASETS[name.lower()]
        self.name, self.classes, self.mean, self.std = f"synthetic {real.name}", real.classes, real.mean, real.std
        self.root, self.train, self.folder = None, bool(train), None
        n = _SPLIT_SIZES[name.lower()][0 if train else 1]
        c, hw = (1, 28) if name.lower() == "mnist" else (3, 32)
        rng = np.random.default_rng(seed + (0 if train else 1))
        self.images_np = rng.integers(0, 256, size=(n, c, hw, hw), dtype=np.uint8)
        self.labels_np = rng.integers(0, len(real.classes), size=n).astype(np.int64)
        self.images, self.labels = self.images_np, self.labels_np
        try:
            import torch
        except ImportError:
            pass
        else:
            self.images, self.labels = torch.from_numpy(self.images_np), torch.from_numpy(self.labels_np)


def load_dataset(name: str, train=True, synthetic=False, **kwargs) -> _Dataset:
    """MNIST or CIFAR10 by name ("mnist", "cifar10"); synthetic=True: a SyntheticDataset of its shape."""
    try:
        cls = DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(DATASETS)}") from None
    if synthetic:
        return SyntheticDataset(name, train=train)
    return cls(train=train, **kwargs)
