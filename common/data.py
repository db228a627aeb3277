"""Binarized MNIST (Larochelle's static binarization) and the one batch stream.

Every backend trains on the same bytes in the same order: the files are checked against
their published MD5, parsed once into uint8, and batches come from one seeded index stream
that any backend (or a resumed run) can re-create from (seed, step) alone.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.spec import N_PIXELS

SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
MD5 = {  # of the uncompressed .amat files
    "train": "db28b1a6ae0fe70cbd3da91acf46e477",
    "valid": "bf37822a04e94123630de6a7dfd9c9ef",
    "test": "14e41ae11040adba6ab8cb291eda0dd8",
}
# The address the reference implementation downloads from; BINARIZED_MNIST_URL overrides it.
DEFAULT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
DIR_ENV, URL_ENV, CACHE_ENV = "BINARIZED_MNIST_DIR", "BINARIZED_MNIST_URL", "VAE_COMPARE_CACHE"


class DataError(Exception):
    """A data file is missing, corrupt or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # (50000, 784) uint8 in {0, 1}
    valid: np.ndarray
    test: np.ndarray
    source: str  # where it was read from, for results.json


def amat_name(split: str) -> str:
    return f"binarized_mnist_{split}.amat"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vae-compare" / "binarized_mnist"


def read_amat_bytes(path: Path) -> bytes:
    """Uncompressed bytes of an .amat or .amat.gz file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a complete gzip file ({e}); "
                            "replace it with a fresh copy") from e
    return raw


def parse_amat(raw: bytes, name: str) -> np.ndarray:
    """Rows of 784 space-separated 0/1 values -> (n, 784) uint8."""
    width = 2 * N_PIXELS  # "0 1 ... 0\n"
    buf = np.frombuffer(raw, dtype=np.uint8)
    if len(buf) % width == 0:
        rows = buf.reshape(-1, width)
        digits, seps = rows[:, 0::2], rows[:, 1::2]
        fixed_width_ok = (np.all(seps[:, :-1] == ord(" ")) and np.all(seps[:, -1] == ord("\n"))
                          and np.all((digits == ord("0")) | (digits == ord("1"))))
        if fixed_width_ok:
            return digits - np.uint8(ord("0"))
    # Slow path only to say exactly what is wrong and where.
    out = []
    for lineno, line in enumerate(raw.decode("ascii", errors="replace").splitlines(), start=1):
        values = line.split()
        if len(values) != N_PIXELS:
            raise DataError(f"{name} line {lineno}: expected {N_PIXELS} values, found {len(values)}")
        bad = [v for v in values if v not in ("0", "1")]
        if bad:
            raise DataError(f"{name} line {lineno}: value {bad[0]!r} is not 0 or 1")
        out.append(np.array(values, dtype=np.uint8))
    if not out:
        raise DataError(f"{name} holds no rows")
    return np.stack(out)


def load_split_from_dir(directory: Path, split: str) -> np.ndarray:
    candidates = [directory / amat_name(split), directory / (amat_name(split) + ".gz")]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise DataError(f"{amat_name(split)}[.gz] not found in {directory}; point --data-dir or "
                        f"{DIR_ENV} at the folder holding the three binarized MNIST files")
    raw = read_amat_bytes(path)
    check_md5(raw, split, str(path))
    return parse_amat(raw, str(path))


def check_md5(raw: bytes, split: str, name: str) -> None:
    digest = hashlib.md5(raw).hexdigest()
    if digest != MD5[split]:
        raise DataError(f"{name}: MD5 {digest} does not match the published {MD5[split]}; "
                        "the file is corrupt or not Larochelle's binarized MNIST")


def atomic_write(path: Path, write) -> None:
    """write(file) into a temporary sibling, then rename: a crash never leaves a file that looks whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_path(split: str) -> Path:
    return cache_dir() / f"{split}.{MD5[split]}.npy"


def load_cached(split: str) -> np.ndarray | None:
    path = cache_path(split)
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        arr = None
    if arr is None or arr.shape != (SPLIT_SIZES[split], N_PIXELS) or arr.dtype != np.uint8 or arr.max() > 1:
        path.unlink(missing_ok=True)  # corrupt: rebuild rather than trust
        return None
    return arr


def download_split(split: str) -> np.ndarray:
    url = os.environ.get(URL_ENV, DEFAULT_URL).rstrip("/") + "/" + amat_name(split)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            raw = response.read()
    except OSError as e:
        raise DataError(f"cannot download {url} ({e}); without internet, pass --data-dir or set "
                        f"{DIR_ENV} to a folder with the .amat[.gz] files, or set {URL_ENV} to a mirror") from e
    check_md5(raw, split, url)
    return parse_amat(raw, url)


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    directory = data_dir or os.environ.get(DIR_ENV)
    if directory:
        return load_split_from_dir(Path(directory), split), str(directory)
    arr = load_cached(split)
    if arr is None:
        arr = download_split(split)
        atomic_write(cache_path(split), lambda f: np.save(f, arr, allow_pickle=False))
    return arr, str(cache_dir())


def load(data_dir: str | os.PathLike | None = None) -> Dataset:
    """--data-dir, else $BINARIZED_MNIST_DIR, else the user cache (downloading into it once)."""
    loaded = {split: load_split(split, data_dir) for split in SPLITS}
    return Dataset(**{s: a for s, (a, _) in loaded.items()}, source=loaded["train"][1])


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    if batch_size > n_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {n_examples} training examples")
    return n_examples // batch_size  # the last partial batch of each epoch is dropped


def batch_indices(n_examples: int, batch_size: int, seed: int, start: int, stop: int) -> np.ndarray:
    """Rows of example indices for steps [start, stop): shuffled epochs, one permutation each.

    Epoch e's permutation comes from SeedSequence((seed, e)), so any range of steps is
    reproducible without replaying the ones before it (resume, chunked training).
    """
    per_epoch = batches_per_epoch(n_examples, batch_size)
    rows, perms = [], {}
    for step in range(start, stop):
        epoch, b = divmod(step, per_epoch)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng(np.random.SeedSequence((seed, epoch))).permutation(n_examples)
        rows.append(perms[epoch][b * batch_size:(b + 1) * batch_size])
    return np.asarray(rows, dtype=np.int64).reshape(stop - start, batch_size)
