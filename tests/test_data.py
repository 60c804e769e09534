"""oxkernels.data: parsing the real files, checksums, downloads (local server only), batches."""
import contextlib
import gzip
import hashlib
import http.server
import io
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import data_root, requires_data
from oxkernels import data

REAL = data_root("mnist")
needs_real_data = requires_data("mnist")


# ---------------------------------------------------------------------------- real files

@needs_real_data
@pytest.mark.parametrize("train,n,first,counts", [
    (True, 60000, [5, 0, 4, 1, 9, 2, 1, 3, 1, 4],
     [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]),
    (False, 10000, [7, 2, 1, 0, 4, 1, 4, 9, 5, 9],
     [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
])
def test_mnist_real_files(train, n, first, counts):
    ds = data.MNIST(root=REAL, train=train, download=False)
    assert tuple(ds.images.shape) == (n, 1, 28, 28) and str(ds.images.dtype).endswith("uint8")
    assert tuple(ds.labels.shape) == (n,) and str(ds.labels.dtype).endswith("int64")
    assert list(ds.labels_np[:10]) == first
    assert list(np.bincount(ds.labels_np, minlength=10)) == counts
    assert ds.classes == [str(d) for d in range(10)]
    # Published pixel statistics (shared/data/README.md): train mean 0.130660, test 0.132515.
    mean = ds.images_np.mean(dtype=np.float64) / 255
    assert abs(mean - (0.130660 if train else 0.132515)) < 1e-5


@requires_data("cifar10")
@pytest.mark.parametrize("train,n,first", [
    (True, 50000, [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]),
    (False, 10000, [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]),
])
def test_cifar10_real_files(train, n, first):
    ds = data.CIFAR10(root=data_root("cifar10"), train=train, download=False)
    assert tuple(ds.images.shape) == (n, 3, 32, 32)
    assert list(ds.labels_np[:10]) == first
    assert list(np.bincount(ds.labels_np, minlength=10)) == [n // 10] * 10
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    red_mean = ds.images_np[:, 0].mean(dtype=np.float64) / 255
    assert abs(red_mean - (0.4914 if train else 0.4942)) < 1e-4


@needs_real_data
def test_numpy_only_view():
    ds = data.MNIST(root=REAL, train=False, download=False, as_numpy=True)
    assert isinstance(ds.images, np.ndarray) and isinstance(ds.labels, np.ndarray)


def test_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("OXKERNELS_DATA", str(tmp_path / "env"))
    assert data.data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.data_root() == tmp_path / "env"
    monkeypatch.delenv("OXKERNELS_DATA")
    assert data.data_root() == Path.home() / ".cache" / "oxkernels"


# ---------------------------------------------------------------------------- synthetic files

def _idx_gz(array: np.ndarray, magic: int) -> bytes:
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    return gzip.compress(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch, rng):
    """A served folder with small idx files, and the checksum table pointing at them."""
    served = tmp_path / "served"
    served.mkdir()
    files = {}
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels = rng.integers(0, 10, size=n)
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx_gz(images, 2051)
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx_gz(labels, 2049)
        files[prefix] = (images, labels)
    table = {}
    for name, content in files.items():
        if name.endswith(".gz"):
            (served / name).write_bytes(content)
            table[name] = hashlib.sha256(content).hexdigest()
    monkeypatch.setattr(data, "MNIST_FILES", table)
    monkeypatch.setattr(data, "MNIST_MIRRORS", [])  # any forgotten mirrors= argument fails, never the internet
    return served, files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _DroppingHandler(_QuietHandler):
    """Announces the full length, sends half of the file, then closes the connection."""

    def do_GET(self):
        content = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[: len(content) // 2])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


@contextlib.contextmanager
def serve(folder, handler=_QuietHandler):
    """An HTTP server on 127.0.0.1 (a free port) serving folder from a thread; yields its URL."""
    requests = []

    class Handler(handler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        yield url, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------------------- downloads

def test_download_success(fake_mnist, tmp_path):
    served, files = fake_mnist
    root = tmp_path / "root"
    with serve(served) as (url, requests):
        ds = data.MNIST(root=root, train=False, mirrors=[url])
    images, labels = files["t10k"]
    np.testing.assert_array_equal(ds.images_np[:, 0], images)
    np.testing.assert_array_equal(ds.labels_np, labels)
    assert _leftovers(root / "mnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # Second load: files present, nothing downloaded.
    with serve(served) as (url, requests):
        data.MNIST(root=root, train=False, mirrors=[url])
    assert requests == []


def test_corrupt_mirror_rejected_next_tried(fake_mnist, tmp_path):
    served, _ = fake_mnist
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in served.iterdir():
        content = bytearray(f.read_bytes())
        content[len(content) // 2] ^= 0xFF
        (corrupt / f.name).write_bytes(bytes(content))
    root = tmp_path / "root"
    with serve(corrupt) as (bad, bad_requests), serve(served) as (good, _):
        with pytest.raises(data.DatasetNotFoundError, match="ChecksumError"):
            data.MNIST(root=root, train=True, mirrors=[bad])
        assert _leftovers(root / "mnist") == []  # nothing left behind
        ds = data.MNIST(root=root, train=True, mirrors=[bad, good])
    assert len(ds) == 7 and len(bad_requests) == 3  # 1 (alone) + 2 files before falling through


def test_connection_dropped_mid_file(fake_mnist, tmp_path):
    served, _ = fake_mnist
    root = tmp_path / "root"
    with serve(served, _DroppingHandler) as (dropping, _), serve(served) as (good, _):
        with pytest.raises(data.DatasetNotFoundError) as err:
            data.MNIST(root=root, train=False, mirrors=[dropping])
        assert dropping in str(err.value)
        assert _leftovers(root / "mnist") == []
        ds = data.MNIST(root=root, train=False, mirrors=[dropping, good])
    assert len(ds) == 3


def test_no_server(fake_mnist, tmp_path):
    root = tmp_path / "root"
    url = _closed_port_url()
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.MNIST(root=root, train=False, mirrors=[url])
    message = str(err.value)
    assert str(root / "mnist") in message and "OXKERNELS_DATA" in message and url in message
    assert _leftovers(root / "mnist") == []


def test_offline_without_files_names_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MIRRORS", [])
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.MNIST(root=tmp_path, train=False, download=False)
    assert str(tmp_path / "mnist") in str(err.value) and "t10k-images-idx3-ubyte.gz" in str(err.value)
    with pytest.raises(data.DatasetNotFoundError, match="cifar-10-batches-bin"):
        data.CIFAR10(root=tmp_path, download=False)


def test_checksum_failure_is_never_parsed(fake_mnist, tmp_path, monkeypatch):
    served, _ = fake_mnist
    folder = tmp_path / "root" / "mnist"
    folder.mkdir(parents=True)
    for f in served.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    bad = folder / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes() + b"\0")

    def must_not_parse(*args):
        raise AssertionError("a file that failed its checksum was parsed")

    monkeypatch.setattr(data, "_read_idx", must_not_parse)
    with pytest.raises(data.ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        data.MNIST(root=tmp_path / "root", train=False, download=False)


# ---------------------------------------------------------------------------- CIFAR-10 tarball

def _fake_cifar_members(rng):
    members = {}
    for name in data.CIFAR10_FILES:
        if name.endswith(".bin"):
            records = rng.integers(0, 256, size=(2, 3073)).astype(np.uint8)
            records[:, 0] %= 10
            members[name] = records.tobytes()
    members["batches.meta.txt"] = ("\n".join(data.CIFAR10_CLASSES) + "\n\n").encode()
    return members


def _tarball(path, entries):
    """entries: list of (name, bytes) for files, or (name, ("symlink", target))."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch, rng):
    members = _fake_cifar_members(rng)
    monkeypatch.setattr(data, "CIFAR10_FILES", {n: hashlib.sha256(c).hexdigest() for n, c in members.items()})
    monkeypatch.setattr(data, "CIFAR10_MIRRORS", [])
    return members


def test_cifar10_download_and_extract(fake_cifar, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    entries = [(f"cifar-10-batches-bin/{n}", c) for n, c in fake_cifar.items()]
    entries.append(("cifar-10-batches-bin/readme.html", b"<html>not extracted</html>"))
    _tarball(served / "cifar-10-binary.tar.gz", entries)
    monkeypatch.setattr(data, "CIFAR10_TARBALL_MD5",
                        hashlib.md5((served / "cifar-10-binary.tar.gz").read_bytes()).hexdigest())
    root = tmp_path / "root"
    with serve(served) as (url, _):
        ds = data.CIFAR10(root=root, train=False, mirrors=[url + "cifar-10-binary.tar.gz"])
    test = np.frombuffer(fake_cifar["test_batch.bin"], np.uint8).reshape(2, 3073)
    np.testing.assert_array_equal(ds.labels_np, test[:, 0])
    np.testing.assert_array_equal(ds.images_np.reshape(2, -1), test[:, 1:])
    assert _leftovers(root / "cifar10") == sorted(["cifar-10-batches-bin", *fake_cifar])  # tarball removed
    assert len(data.CIFAR10(root=root, train=True, download=False)) == 10


def test_cifar10_tarball_wrong_md5_rejected(fake_cifar, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    _tarball(served / "cifar-10-binary.tar.gz", [(f"cifar-10-batches-bin/{n}", c) for n, c in fake_cifar.items()])
    root = tmp_path / "root"
    with serve(served) as (url, _):  # md5 is still the official one: this archive does not match
        with pytest.raises(data.DatasetNotFoundError, match="md5"):
            data.CIFAR10(root=root, train=False, mirrors=[url + "cifar-10-binary.tar.gz"])
    assert _leftovers(root) in ([], ["cifar10"])


@pytest.mark.parametrize("bad_entry", [
    ("../evil.bin", b"x"),
    ("/tmp/evil.bin", b"x"),
    ("cifar-10-batches-bin/link", ("symlink", "/etc/passwd")),
])
def test_unsafe_tarball_rejected(fake_cifar, tmp_path, bad_entry):
    entries = [(f"cifar-10-batches-bin/{n}", c) for n, c in fake_cifar.items()] + [bad_entry]
    tarball = tmp_path / "evil.tar.gz"
    _tarball(tarball, entries)
    with pytest.raises(ValueError, match="rejected"):
        data._extract_cifar10(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.bin").exists()


def test_tarball_member_with_wrong_checksum(fake_cifar, tmp_path):
    entries = [(f"cifar-10-batches-bin/{n}", c) for n, c in fake_cifar.items()]
    entries[0] = (entries[0][0], entries[0][1][:-1] + b"\1")
    tarball = tmp_path / "t.tar.gz"
    _tarball(tarball, entries)
    with pytest.raises(data.ChecksumError):
        data._extract_cifar10(tarball, tmp_path / "out")
    assert not any(p.name.startswith(".") or p.name == entries[0][0].split("/")[1]
                   for p in (tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------- device batches

@pytest.fixture
def torch():
    """torch for the DeviceBatches tests only: the rest of this file runs without it."""
    return pytest.importorskip("torch")


class _Tiny:
    """A data set object as DeviceBatches needs it, without files."""

    def __init__(self, rng, n=37, channels=3):
        self.images_np = rng.integers(0, 256, size=(n, channels, 4, 5)).astype(np.uint8)
        self.labels_np = rng.integers(0, 10, size=n).astype(np.int64)
        self.mean = tuple(rng.uniform(0.2, 0.6, channels))
        self.std = tuple(rng.uniform(0.2, 0.3, channels))

    def __len__(self):
        return len(self.labels_np)


def test_batches_normalise_and_cover(rng, torch):
    ds = _Tiny(rng)
    batches = data.DeviceBatches(ds, batch_size=8, shuffle=True, seed=3)
    assert len(batches) == 5
    xs, ys = zip(*batches)
    assert [len(y) for y in ys] == [8, 8, 8, 8, 5]
    perm = batches.order().numpy()
    assert sorted(perm) == list(range(37))
    mean = np.array(ds.mean).reshape(1, -1, 1, 1)
    std = np.array(ds.std).reshape(1, -1, 1, 1)
    ref = (ds.images_np[perm] / 255.0 - mean) / std  # float64 reference
    out = torch.cat(xs).double().numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6
    np.testing.assert_array_equal(torch.cat(ys).numpy(), ds.labels_np[perm])


def test_batches_seeded_shuffle_per_epoch(rng, torch):
    ds = _Tiny(rng)
    a = data.DeviceBatches(ds, batch_size=8, shuffle=True, seed=5)
    b = data.DeviceBatches(ds, batch_size=8, shuffle=True, seed=5)
    first = a.order()
    assert torch.equal(first, b.order())
    a.set_epoch(1)
    assert not torch.equal(first, a.order())
    expected = torch.randperm(37, generator=torch.Generator().manual_seed(5 + 1))
    assert torch.equal(a.order(), expected)


def test_batches_limit_and_order(rng, torch):
    ds = _Tiny(rng)
    batches = data.DeviceBatches(ds, batch_size=4, limit=10)
    ys = torch.cat([y for _, y in batches])
    np.testing.assert_array_equal(ys.numpy(), ds.labels_np[:10])
    with pytest.raises(ValueError, match="batch_size"):
        data.DeviceBatches(ds, batch_size=0)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="mnist"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("world_size,batch", [(2, 4), (3, 2), (4, 5)])
def test_batches_sharded_ranks_make_the_global_batches(rng, torch, world_size, batch):
    """Rank r's k-th batch is the r-th equal part of the unsharded run's k-th batch of
    world_size·batch samples (the order truncated to a multiple of world_size)."""
    ds = _Tiny(rng, n=37)
    whole = data.DeviceBatches(ds, batch_size=world_size * batch, shuffle=True, seed=4)
    whole.set_epoch(2)
    used = (37 // world_size) * world_size
    global_labels = torch.cat([y for _, y in whole])[:used]
    global_x = torch.cat([x for x, _ in whole])[:used]
    ranks = []
    for r in range(world_size):
        b = data.DeviceBatches(ds, batch_size=batch, shuffle=True, seed=4, rank=r, world_size=world_size)
        b.set_epoch(2)
        ranks.append(list(b))
        assert b.num_samples == 37 // world_size and len(b) == len(ranks[0])
    start = 0
    for step in range(len(ranks[0])):
        parts = [ranks[r][step] for r in range(world_size)]
        sizes = {len(y) for _, y in parts}
        assert len(sizes) == 1, f"step {step}: ranks got unequal batches {sizes}"
        size = sizes.pop()
        for r, (x, y) in enumerate(parts):
            lo = start + r * size
            assert torch.equal(y, global_labels[lo:lo + size])
            assert torch.equal(x, global_x[lo:lo + size])
        start += world_size * size
    assert start == used


def test_batches_sharding_checks_rank(rng, torch):
    ds = _Tiny(rng)
    with pytest.raises(ValueError, match="rank"):
        data.DeviceBatches(ds, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        data.DeviceBatches(ds, batch_size=4, world_size=0)


@pytest.mark.parametrize("name,shape,n_train", [("mnist", (1, 28, 28), 60000), ("cifar10", (3, 32, 32), 50000)])
def test_synthetic_dataset_has_the_real_shapes(name, shape, n_train):
    real = data.DATASETS[name]
    train = data.load_dataset(name, train=True, synthetic=True)
    test = data.load_dataset(name, train=False, synthetic=True)
    assert train.images_np.shape == (n_train, *shape) and train.images_np.dtype == np.uint8
    assert test.images_np.shape == (10000, *shape)
    assert train.labels_np.dtype == np.int64 and set(np.unique(train.labels_np)) == set(range(10))
    assert (train.classes, train.mean, train.std) == (real.classes, real.mean, real.std)
    assert not np.array_equal(train.images_np[:10000], test.images_np)
