"""Binarized MNIST (Larochelle's static binarization): where it comes from, its subsets and the one batch stream.

Every backend trains on the same bytes in the same order. Sources, in order:
  1. --data-dir, else $BINARIZED_MNIST_DIR: a folder with binarized_mnist_{train,valid,test}.amat[.gz];
  2. the copy shipped inside this package (common/binarized_mnist/, 3 MB; origin and licence in its NOTICE);
  3. a download cache (only ever filled by 4), re-verified on every read;
  4. a download from $BINARIZED_MNIST_URL's addresses, then MIRRORS.
Every source is checked against the published MD5 of the .amat files (the cache against the SHA-256 of the
arrays those files parse to). Subsets (--valid-examples, --test-examples) are a fixed, seeded, uniformly
drawn set of rows, the same for every backend, seed and run; batches come from one seeded index stream
that any backend (or a resumed run) re-creates from (seed, step) alone.
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
MD5 = {  # of the uncompressed .amat files, as published with the data set
    "train": "db28b1a6ae0fe70cbd3da91acf46e477",
    "valid": "bf37822a04e94123630de6a7dfd9c9ef",
    "test": "14e41ae11040adba6ab8cb291eda0dd8",
}
ARRAY_SHA256 = {  # of the (n, 784) uint8 arrays those files parse to: what the download cache is checked against
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
SHIPPED = Path(__file__).resolve().parent / "binarized_mnist"
MIRRORS = (  # tried in order after $BINARIZED_MNIST_URL's addresses; any that serves the right bytes will do
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets",
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist",  # the original address
)
DIR_ENV, URL_ENV, CACHE_ENV = "BINARIZED_MNIST_DIR", "BINARIZED_MNIST_URL", "VAE_COMPARE_CACHE"
# The test file is sorted by class with MNIST's test counts per digit 0..9 (the training and validation
# files are shuffled and unlabelled); tests/test_data.py checks the boundaries against the images.
TEST_CLASS_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
SUBSET_SEED = 20_240_601  # fixed: a subset is the same rows whatever the run's --seed
SYNTHETIC = "synthetic"  # the source of a family's own generated data (Dataset.source)


class DataError(Exception):
    """A data file is missing, corrupt or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class Dataset:
    train: np.ndarray  # (50000, 784) uint8 in {0, 1}
    valid: np.ndarray
    test: np.ndarray
    source: str  # where it was read from, for results.json (no machine paths for the shipped copy)


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
            raise DataError(f"{path} is not a complete gzip file ({e}); replace it with a fresh copy") from e
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


def check_md5(raw: bytes, split: str, name: str) -> None:
    digest = hashlib.md5(raw).hexdigest()
    if digest != MD5[split]:
        raise DataError(f"{name}: MD5 {digest} does not match the published {MD5[split]}; "
                        "the file is corrupt or not Larochelle's binarized MNIST")


def array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def load_split_from_dir(directory: Path, split: str) -> np.ndarray:
    candidates = [directory / amat_name(split), directory / (amat_name(split) + ".gz")]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        raise DataError(f"{amat_name(split)}[.gz] not found in {directory}; point --data-dir or "
                        f"{DIR_ENV} at the folder holding the three binarized MNIST files")
    raw = read_amat_bytes(path)
    check_md5(raw, split, str(path))
    return parse_amat(raw, str(path))


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
    """The cached array if it is exactly the verified one; a cache that is anything else is removed."""
    path = cache_path(split)
    if not path.exists():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        arr = None
    if arr is None or arr.dtype != np.uint8 or array_digest(arr) != ARRAY_SHA256[split]:
        path.unlink(missing_ok=True)  # corrupt or tampered with: rebuild rather than trust
        return None
    return arr


def mirrors() -> list[str]:
    """$BINARIZED_MNIST_URL (one or more addresses, comma- or space-separated) first, then MIRRORS."""
    extra = os.environ.get(URL_ENV, "").replace(",", " ").split()
    return [u.rstrip("/") for u in [*extra, *MIRRORS]]


def download_split(split: str) -> np.ndarray:
    failures = []
    for base in mirrors():
        url = f"{base}/{amat_name(split)}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                raw = response.read()
            check_md5(raw, split, url)
            return parse_amat(raw, url)
        except (OSError, DataError) as e:
            failures.append(f"{url}: {e}")
    raise DataError(f"cannot get {amat_name(split)} from any mirror ({'; '.join(failures)}); the package ships "
                    f"the data in {SHIPPED}: reinstall it, or pass --data-dir / set {DIR_ENV} to a folder with the "
                    f".amat[.gz] files, or add a mirror to {URL_ENV}")


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, str]:
    """(array, source): the first source in the module's order that has the split."""
    directory = data_dir or os.environ.get(DIR_ENV)
    if directory:
        return load_split_from_dir(Path(directory), split), str(directory)
    if (SHIPPED / (amat_name(split) + ".gz")).exists():
        return load_split_from_dir(SHIPPED, split), "shipped with vae-compare (common/binarized_mnist)"
    arr = load_cached(split)
    if arr is None:
        arr = download_split(split)
        atomic_write(cache_path(split), lambda f: np.save(f, arr, allow_pickle=False))
    return arr, "download cache"


def load(data_dir: str | os.PathLike | None = None) -> Dataset:
    loaded = {split: load_split(split, data_dir) for split in SPLITS}
    return Dataset(**{s: a for s, (a, _) in loaded.items()}, source=loaded["train"][1])


def subset_rows(split: str, n: int, size: int | None = None) -> np.ndarray:
    """The rows of a split (of size rows, binarized MNIST's by default) that an n-example subset uses: a fixed
    uniform draw without replacement (so class-balanced in expectation; nested: the first n of one
    permutation), sorted; all rows when n is the split's size. The same for every backend, seed and run."""
    size = SPLIT_SIZES[split] if size is None else size
    if not 0 < n <= size:
        raise ValueError(f"{split} subset of {n} examples: the split has {size:,}")
    if n == size:
        return np.arange(size)
    order = np.random.default_rng(np.random.SeedSequence((SUBSET_SEED, SPLITS.index(split)))).permutation(size)
    return np.sort(order[:n])


def test_labels() -> np.ndarray:
    """Digit labels of the test split, derived from its class-sorted order (TEST_CLASS_COUNTS)."""
    return np.repeat(np.arange(10), TEST_CLASS_COUNTS)


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    if batch_size > n_examples:
        raise ValueError(f"batch size {batch_size} exceeds the {n_examples} training examples")
    return n_examples // batch_size  # the last partial batch of each epoch is dropped


def batch_indices(n_examples: int, batch_size: int, seed: int, start: int, stop: int,
                  order: str = "shuffled") -> np.ndarray:
    """Rows of example indices for steps [start, stop): shuffled epochs, one permutation each.

    Epoch e's permutation comes from SeedSequence((seed, e)), so any range of steps is
    reproducible without replaying the ones before it (resume, chunked training). order "fixed":
    every epoch takes the examples in their order (Burda et al.'s code), whatever the seed.
    """
    per_epoch = batches_per_epoch(n_examples, batch_size)
    rows, perms = [], {}
    for step in range(start, stop):
        epoch, b = divmod(step, per_epoch)
        if epoch not in perms:
            perms[epoch] = np.arange(n_examples) if order == "fixed" else \
                np.random.default_rng(np.random.SeedSequence((seed, epoch))).permutation(n_examples)
        rows.append(perms[epoch][b * batch_size:(b + 1) * batch_size])
    return np.asarray(rows, dtype=np.int64).reshape(stop - start, batch_size)
