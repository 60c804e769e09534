"""Getting data files safely: checksums, atomic downloads from mirrors (with a progress bar),
and extraction of a tarball's expected members.

A download goes to a temporary file next to its destination, is hashed while it is written,
and is renamed onto the destination only when its digest matches: an interrupted or corrupt
download never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..progress import Progress

_CHUNK = 1 << 20
_TIMEOUT_S = 30


class ChecksumError(ValueError):
    """A data file does not match its published checksum."""


class DownloadError(OSError):
    """Every mirror failed."""


_verified: dict = {}  # (path, size, mtime_ns) -> digest, so a file is hashed once per process


def file_digest(path: Path, algorithm: str) -> str:
    """The file's hex digest by `algorithm`, computed once per (path, size, mtime) in this process."""
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
    actual = file_digest(path, "sha256")
    if actual != sha256:
        raise ChecksumError(
            f"{path} does not match its published checksum (sha256 {actual}, expected {sha256}); "
            f"the file is corrupt or not the official one. Delete it so it is downloaded again."
        )


def fetch(url: str, dest: Path, algorithm: str, digest: str) -> None:
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


def fetch_from_mirrors(urls, dest: Path, algorithm: str, digest: str) -> None:
    """Try each URL in order; raise DownloadError listing every failure."""
    failures = []
    for url in urls:
        try:
            fetch(url, dest, algorithm, digest)
            return
        except (OSError, http.client.HTTPException, ValueError, EOFError) as e:  # ChecksumError is a ValueError
            failures.append(f"  {url}: {type(e).__name__}: {e}")
    raise DownloadError(f"could not download {dest.name}; tried:\n" + "\n".join(failures))


def extract_members(tarball: Path, folder: Path, subdir: str, files: dict) -> None:
    """Extract the members subdir/<name> of a .tar.gz for each name in files (name -> sha256)
    into folder, each by temp file + sha256 check + rename. Refuses archives with absolute
    paths, '..' or links; ignores members it does not expect (readme.html, directories)."""
    wanted = {f"{subdir}/{name}": name for name in files}
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
                if h.hexdigest() != files[name]:
                    raise ChecksumError(f"{tarball}: member {m.name} has sha256 {h.hexdigest()}, "
                                        f"expected {files[name]}")
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            found.add(name)
    missing = set(files) - found
    if missing:
        raise ValueError(f"{tarball}: archive lacks {sorted(missing)}")
