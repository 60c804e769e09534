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
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

_CHUNK = 1 << 20
_TIMEOUT_S = 30


class DatasetNotFoundError(FileNotFoundError):
    """The data files are missing and could not be downloaded."""


class ChecksumError(ValueError):
    """A data file does not match its published checksum."""


class DownloadError(OSError):
    """Every mirror failed."""


def data_root(root=None) -> Path:
    """The data folder: `root`, else $OXKERNELS_DATA, else ~/.cache/oxkernels."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("OXKERNELS_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "oxkernels"


# ---------------------------------------------------------------------------- checksums

_verified: dict = {}  # (path, size, mtime_ns) -> digest, so a file is hashed once per process


def _file_digest(path: Path, algorithm: str) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, algorithm)
    if key not in _verified:
        h = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _verified[key] = h.hexdigest()
    return _verified[key]


def verify_file(path: Path, sha256: str) -> None:
    """Raise ChecksumError unless the file's sha256 is the published one."""
    actual = _file_digest(path, "sha256")
    if actual != sha256:
        raise ChecksumError(
            f"{path} does not match its published checksum (sha256 {actual}, expected {sha256}); "
            f"the file is corrupt or not the official one. Delete it so it is downloaded again."
        )


# ---------------------------------------------------------------------------- download

class Progress:
    """A progress bar on stderr: tqdm when installed, else a plain one-line bar.
    `unit="B"` shows bytes (scaled); `postfix(text)` adds e.g. the running loss."""

    def __init__(self, total, desc, unit="B", enabled=True):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.enabled, self._bar, self._last, self._start, self._postfix = enabled, None, 0.0, time.monotonic(), ""
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total or None, desc=desc, unit=unit, unit_scale=unit == "B", leave=False,
                         mininterval=0.5)

    def update(self, n):
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last > 0.25:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            amount = f"{self.done / 1e6:.1f} MB" if self.unit == "B" else f"{self.done} {self.unit}"
            speed = f"{rate / 1e6:.1f} MB/s" if self.unit == "B" else f"{rate:.0f} {self.unit}/s"
            if self.total:
                frac = min(self.done / self.total, 1.0)
                line = f"{self.desc} [{'#' * int(30 * frac):<30}] {100 * frac:5.1f}% {speed}"
            else:
                line = f"{self.desc} {amount} {speed}"
            sys.stderr.write(f"\r{line} {self._postfix}")
            sys.stderr.flush()

    def postfix(self, text: str):
        self._postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self):
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            sys.stderr.write("\r" + " " * 79 + "\r")
            sys.stderr.flush()


def _fetch(url: str, dest: Path, algorithm: str, digest: str) -> None:
    """Download url to dest, atomically: write a temp file next to dest, hash it while
    writing, and rename it onto dest only when the digest matches. On any failure the
    temp file is removed and nothing is left at dest."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        h = hashlib.new(algorithm)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            progress = Progress(total, dest.name)
            received = 0
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
            finally:
                progress.close()
        if total and received != total:
            raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")
        if h.hexdigest() != digest:
            raise ChecksumError(f"{url}: {algorithm} {h.hexdigest()} does not match the published {digest}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fetch_from_mirrors(urls, dest: Path, algorithm: str, digest: str) -> None:
    """Try each URL in order; raise DownloadError listing every failure."""
    failures = []
    for url in urls:
        try:
            _fetch(url, dest, algorithm, digest)
            return
        except (OSError, http.client.HTTPException, ValueError, EOFError) as e:  # ChecksumError is a ValueError
            failures.append(f"  {url}: {type(e).__name__}: {e}")
    raise DownloadError(f"could not download {dest.name}; tried:\n" + "\n".join(failures))


# ---------------------------------------------------------------------------- CIFAR-10 tarball

def _extract_cifar10(tarball: Path, folder: Path) -> None:
    """Extract the expected members of the official tarball into folder, each by temp
    file + sha256 check + rename. Refuses archives with absolute paths, '..' or links;
    ignores members it does not expect (readme.html, directories)."""
    wanted = {f"{CIFAR10_DIR}/{name}": name for name in CIFAR10_FILES}
    with tarfile.open(tarball, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(("/", "\\")) or Path(m.name).is_absolute() or ".." in parts:
                raise ValueError(f"{tarball}: unsafe member path {m.name!r}; archive rejected")
            if m.issym() or m.islnk() or m.isdev() or m.isfifo():
                raise ValueError(f"{tarball}: member {m.name!r} is a link or special file; archive rejected")
        found = set()
        for m in members:
            name = wanted.get(m.name.removeprefix("./"))
            if name is None or not m.isfile():
                continue
            dest = folder / name
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
            tmp = Path(tmp_name)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as out, tar.extractfile(m) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                if h.hexdigest() != CIFAR10_FILES[name]:
                    raise ChecksumError(f"{tarball}: member {m.name} has sha256 {h.hexdigest()}, "
                                        f"expected {CIFAR10_FILES[name]}")
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            found.add(name)
    missing = set(CIFAR10_FILES) - found
    if missing:
        raise ValueError(f"{tarball}: archive lacks {sorted(missing)}")


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
            _fetch_from_mirrors([u.rstrip("/") + "/" + name for u in urls],
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
            _fetch_from_mirrors(urls, tarball, "md5", CIFAR10_TARBALL_MD5)
        elif _file_digest(tarball, "md5") != CIFAR10_TARBALL_MD5:
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


# ---------------------------------------------------------------------------- batches on the device

def epoch_order(n: int, seed):
    """An epoch's sample order: torch.randperm(n) drawn from torch.Generator().manual_seed(seed),
    or None for seed None (no shuffle). DeviceBatches and the fused trainers use this one draw."""
    import torch

    if seed is None:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def normalisation(mean, std):
    """float32 (scale, shift) per channel for x = pixel · scale − shift, the float32 form of
    x = (pixel / 255 − mean) / std: scale = 1 / (255 std), shift = mean / std."""
    import torch

    std = torch.tensor(std, dtype=torch.float32)
    mean = torch.tensor(mean, dtype=torch.float32)
    return 1.0 / (255.0 * std), mean / std


@dataclass
class DeviceBatches:
    """Normalised float32 batches from a data set held whole on `device`.

    The images are normalised once, on the device, into float32:
    x = (pixel / 255 − mean_c) / std_c, done as x = pixel · (1 / (255 std_c)) − mean_c / std_c.
    With shuffle, epoch e uses the permutation of torch.Generator().manual_seed(seed + e)
    (so runs with the same seed see the same batches whatever the backend or device): the
    epoch's order is gathered once into a buffer and the batches are consecutive slices of
    it, which costs one large copy per epoch instead of one small gather per batch (several
    times cheaper on the CPU). The batches are views of that buffer, valid until the next
    epoch starts. `limit` keeps the first `limit` samples. The last batch may be smaller.
    Memory: 4 bytes per pixel, twice when shuffling (MNIST 376 MB, CIFAR-10 1.2 GB).

    Data-parallel sharding (`world_size` W > 1, this process being `rank` r): the epoch's
    order (the same permutation on every rank) is cut into global batches of W·batch_size
    samples, and rank r takes the r-th of the W equal parts of each. The order is first
    truncated to a multiple of W, so the last global batch splits evenly too: every rank
    takes the same number of samples at every step, and the mean of the W per-rank mean
    gradients (what DistributedDataParallel computes) is the mean gradient over the global
    batch — the step a single process takes with batch_size W·batch_size.
    """

    dataset: _Dataset
    batch_size: int
    device: object = "cpu"
    shuffle: bool = False
    seed: int = 0
    limit: int | None = None
    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        import torch

        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need world_size ≥ 1 and 0 ≤ rank < world_size, got rank {self.rank} "
                             f"of world_size {self.world_size}")
        n = len(self.dataset) if self.limit is None else min(int(self.limit), len(self.dataset))
        self.labels = torch.as_tensor(self.dataset.labels_np[:n]).to(self.device)
        self._inputs = None
        self.epoch = 0

    @property
    def inputs(self):
        """The normalised float32 images on the device, made on first use (a fused trainer's
        native epoch reads the uint8 images instead and never needs them)."""
        if self._inputs is None:
            self._materialise()
        return self._inputs

    def _materialise(self):
        import torch

        n = len(self.labels)
        pixels = self.dataset.images_np[:n]
        scale, shift = (t.view(1, -1, 1, 1).to(self.device) for t in normalisation(self.dataset.mean,
                                                                                    self.dataset.std))
        inputs = torch.empty(pixels.shape, dtype=torch.float32, device=self.device)
        chunk = 8192  # bounded temporaries while converting
        for start in range(0, n, chunk):
            u8 = torch.as_tensor(pixels[start:start + chunk]).to(self.device)
            inputs[start:start + chunk] = u8.float().mul_(scale).sub_(shift)
        if self.shuffle or self.world_size > 1:
            self._inputs_epoch = torch.empty((self.num_samples, *inputs.shape[1:]), dtype=inputs.dtype,
                                             device=self.device)
            self._labels_epoch = torch.empty(self.num_samples, dtype=self.labels.dtype, device=self.device)
        self._inputs = inputs

    def __len__(self):
        return -(-self.num_samples // self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this process draws per epoch (all of them unless sharded)."""
        return len(self.labels) // self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def shuffle_seed(self):
        """This epoch's epoch_order seed: seed + epoch, or None without shuffle."""
        return self.seed + self.epoch if self.shuffle else None

    def order(self):
        """This epoch's permutation (on the device), or None without shuffle."""
        perm = epoch_order(len(self.labels), self.shuffle_seed)
        return None if perm is None else perm.to(self.device)

    def shard(self, order):
        """This rank's part of an epoch order (see the class docstring): a 1-D index tensor."""
        import torch

        w, b = self.world_size, self.batch_size
        order = order[: self.num_samples * w]
        full = len(order) // (w * b)  # whole global batches; the rest splits into w equal parts
        head = order[: full * w * b].view(full, w, b)[:, self.rank].reshape(-1)
        tail = order[full * w * b:].view(w, -1)[self.rank]
        return torch.cat((head, tail))

    def __iter__(self):
        import torch

        perm = self.order()
        if self.world_size > 1:
            perm = self.shard(torch.arange(len(self.labels), device=self.device) if perm is None else perm)
        if perm is None:
            inputs, labels = self.inputs, self.labels
        else:
            inputs = torch.index_select(self.inputs, 0, perm, out=self._inputs_epoch)
            labels = torch.index_select(self.labels, 0, perm, out=self._labels_epoch)
        n = len(labels)
        for start in range(0, n, self.batch_size):
            yield inputs[start:start + self.batch_size], labels[start:start + self.batch_size]
