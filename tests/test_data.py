"""The data files are checked, parsed and streamed the same way for every backend."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from conftest import data_dir

from common import data


def copy_split(tmp_path, split: str, gz: bool = True):
    source = data_dir() / (data.amat_name(split) + ".gz")
    target = tmp_path / (data.amat_name(split) + (".gz" if gz else ""))
    if gz:
        shutil.copy(source, target)
    else:
        target.write_bytes(gzip.decompress(source.read_bytes()))
    return target


def test_real_data_has_published_shape_and_is_binary(dataset):
    assert dataset.train.shape == (50_000, 784)
    assert dataset.valid.shape == (10_000, 784) and dataset.test.shape == (10_000, 784)
    assert dataset.train.dtype == np.uint8 and dataset.train.max() == 1
    assert 0.12 < dataset.train.mean() < 0.14  # about 13% of binarized MNIST pixels are on


def test_gzipped_and_plain_files_give_the_same_array(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    copy_split(tmp_path / "gz", "valid", gz=True)
    copy_split(tmp_path / "plain", "valid", gz=False)
    a = data.load_split_from_dir(tmp_path / "gz", "valid")
    b = data.load_split_from_dir(tmp_path / "plain", "valid")
    np.testing.assert_array_equal(a, b)


def test_wrong_checksum_is_refused_and_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    path = copy_split(tmp_path, "test", gz=False)
    raw = bytearray(path.read_bytes())
    raw[0] = ord("1") if raw[0] == ord("0") else ord("0")  # one flipped pixel, still valid .amat
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="MD5 .* does not match"):
        data.load_split(split="test", data_dir=tmp_path)
    assert not (tmp_path / "cache").exists()


def test_truncated_gzip_gives_a_clear_error(tmp_path):
    path = copy_split(tmp_path, "valid", gz=True)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(data.DataError, match="not a complete gzip file"):
        data.load_split_from_dir(tmp_path, "valid")


def test_missing_file_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(data.DataError, match=r"binarized_mnist_train.amat\[.gz\] not found .* --data-dir"):
        data.load_split_from_dir(tmp_path, "train")


@pytest.mark.parametrize("line, problem", [("0 1 0", "expected 784 values, found 3"),
                                           (" ".join(["0"] * 783 + ["2"]), "value '2' is not 0 or 1")])
def test_malformed_row_names_file_and_line(line, problem):
    good = " ".join(["0"] * 784)
    raw = "\n".join([good, good, line, good]).encode() + b"\n"
    with pytest.raises(data.DataError, match=f"x.amat line 3: {problem}"):
        data.parse_amat(raw, "x.amat")


def test_download_is_verified_cached_and_reused(tmp_path, monkeypatch):
    """A local mirror stands in for the canonical address (no internet here)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / data.amat_name("valid")).write_bytes(
        gzip.decompress((data_dir() / (data.amat_name("valid") + ".gz")).read_bytes()))
    monkeypatch.setenv(data.URL_ENV, mirror.as_uri())
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(data.DIR_ENV, raising=False)
    first, _ = data.load_split("valid")
    assert data.cache_path("valid").exists()
    (mirror / data.amat_name("valid")).unlink()  # the second load must not need the source
    second, source = data.load_split("valid")
    np.testing.assert_array_equal(first, second)
    assert source == str(tmp_path / "cache")


def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    data.cache_path("test").parent.mkdir(parents=True)
    data.cache_path("test").write_bytes(b"not an array")
    assert data.load_cached("test") is None
    assert not data.cache_path("test").exists()


def test_interrupted_write_leaves_no_file_that_looks_complete(tmp_path):
    target = tmp_path / "cache" / "train.npy"

    def dies_half_way(f):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # Ctrl-C or a dropped connection during a download

    with pytest.raises(KeyboardInterrupt):
        data.atomic_write(target, dies_half_way)
    assert not target.exists() and list(target.parent.iterdir()) == []
    data.atomic_write(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole"


def test_batch_stream_is_reproducible_and_seeded():
    a = data.batch_indices(1000, 100, seed=0, start=0, stop=25)
    b = data.batch_indices(1000, 100, seed=0, start=0, stop=25)
    c = data.batch_indices(1000, 100, seed=1, start=0, stop=25)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for epoch in range(2):  # each epoch is a permutation: every example once
        assert sorted(a[10 * epoch:10 * (epoch + 1)].ravel()) == list(range(1000))
    assert not np.array_equal(a[:10], a[10:20])  # reshuffled every epoch
    np.testing.assert_array_equal(data.batch_indices(1000, 100, 0, 13, 20), a[13:20])  # random access


def test_batch_larger_than_training_set_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        data.batch_indices(100, 128, 0, 0, 1)
