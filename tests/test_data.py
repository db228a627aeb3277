"""The data: shipped and checked, parsed and streamed the same way for every backend, subsets that represent
their split, and the test labels derived from the test file's order."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from common import data

SHIPPED = data.SHIPPED  # the tests that hide the shipped copy still copy from it


def copy_split(tmp_path, split: str, gz: bool = True):
    source = SHIPPED / (data.amat_name(split) + ".gz")
    target = tmp_path / (data.amat_name(split) + (".gz" if gz else ""))
    if gz:
        shutil.copy(source, target)
    else:
        target.write_bytes(gzip.decompress(source.read_bytes()))
    return target


def test_shipped_data_is_the_default_and_has_the_published_shape(dataset, monkeypatch):
    monkeypatch.delenv(data.DIR_ENV, raising=False)
    assert dataset.source.startswith("shipped")
    assert dataset.train.shape == (50_000, 784)
    assert dataset.valid.shape == (10_000, 784) and dataset.test.shape == (10_000, 784)
    assert dataset.train.dtype == np.uint8 and dataset.train.max() == 1
    assert 0.12 < dataset.train.mean() < 0.14  # about 13% of binarized MNIST pixels are on
    for split in data.SPLITS:
        assert data.array_digest(getattr(dataset, split)) == data.ARRAY_SHA256[split]


def test_shipped_data_comes_with_its_origin_and_licence():
    notice = (data.SHIPPED / "NOTICE.md").read_text()
    assert "CC BY-SA 3.0" in notice and all(md5 in notice for md5 in data.MD5.values())


def test_gzipped_and_plain_files_give_the_same_array(tmp_path):
    (tmp_path / "gz").mkdir()
    (tmp_path / "plain").mkdir()
    copy_split(tmp_path / "gz", "valid", gz=True)
    copy_split(tmp_path / "plain", "valid", gz=False)
    a = data.load_split_from_dir(tmp_path / "gz", "valid")
    b = data.load_split_from_dir(tmp_path / "plain", "valid")
    np.testing.assert_array_equal(a, b)


def test_wrong_checksum_is_refused(tmp_path):
    path = copy_split(tmp_path, "test", gz=False)
    raw = bytearray(path.read_bytes())
    raw[0] = ord("1") if raw[0] == ord("0") else ord("0")  # one flipped pixel, still valid .amat
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="MD5 .* does not match"):
        data.load_split(split="test", data_dir=tmp_path)


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


@pytest.fixture
def no_shipped_data(tmp_path, monkeypatch):
    """As if the package data were removed: the download (from a local mirror) and its cache are next."""
    monkeypatch.setattr(data, "SHIPPED", tmp_path / "nothing-shipped")
    monkeypatch.setattr(data, "MIRRORS", ())
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(data.DIR_ENV, raising=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    return mirror


def test_download_tries_each_mirror_verifies_caches_and_reuses(no_shipped_data, tmp_path, monkeypatch):
    bad, good = tmp_path / "bad-mirror", no_shipped_data
    bad.mkdir()
    (bad / data.amat_name("valid")).write_bytes(b"0 1\n")  # serves something, but not the data set
    copy_split(good, "valid", gz=False)
    monkeypatch.setenv(data.URL_ENV, f"{bad.as_uri()}, {good.as_uri()}")
    first, source = data.load_split("valid")
    assert source == "download cache" and data.cache_path("valid").exists()
    (good / data.amat_name("valid")).unlink()  # the second load must not need any mirror
    second, _ = data.load_split("valid")
    np.testing.assert_array_equal(first, second)


def test_every_mirror_failing_says_what_to_do(no_shipped_data, monkeypatch):
    monkeypatch.setenv(data.URL_ENV, no_shipped_data.as_uri())
    with pytest.raises(data.DataError, match="cannot get binarized_mnist_test.amat from any mirror.*--data-dir"):
        data.load_split("test")
    assert not data.cache_path("test").exists()


def test_cache_is_reverified_not_just_shape_checked(no_shipped_data, dataset):
    """A cached array of the right shape and dtype but other values (one flipped pixel) is not trusted."""
    data.cache_path("test").parent.mkdir(parents=True)
    tampered = dataset.test.copy()
    tampered[0, 0] ^= 1
    np.save(data.cache_path("test"), tampered)
    assert data.load_cached("test") is None and not data.cache_path("test").exists()
    np.save(data.cache_path("test"), dataset.test)
    np.testing.assert_array_equal(data.load_cached("test"), dataset.test)


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


def test_a_fixed_batch_order_takes_the_examples_in_file_order_every_pass():
    """--batch-order fixed (Burda et al.'s code): every epoch is 0, 1, ..., n-1 in batches, whatever the seed."""
    a = data.batch_indices(1000, 100, seed=0, start=0, stop=25, order="fixed")
    np.testing.assert_array_equal(a, np.tile(np.arange(1000).reshape(10, 100), (3, 1))[:25])
    np.testing.assert_array_equal(data.batch_indices(1000, 100, 1, 13, 20, order="fixed"), a[13:20])


def test_batch_larger_than_training_set_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        data.batch_indices(100, 128, 0, 0, 1)


# --- test labels and representative subsets ---

def test_test_labels_follow_the_class_sorted_file(dataset):
    """The derived labels agree with the images: a nearest-class-mean classifier built from the labels puts
    >= 80% of each class's images in their own class, and moving every boundary by 50 rows makes it worse."""
    labels = data.test_labels()
    assert len(labels) == 10_000 and list(np.bincount(labels)) == list(data.TEST_CLASS_COUNTS)
    x = dataset.test.astype(np.float64)

    def agreement(lab):
        means = np.stack([x[lab == c].mean(axis=0) for c in range(10)])
        nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
        return (nearest == lab).mean(), [(nearest[lab == c] == c).mean() for c in range(10)]

    overall, per_class = agreement(labels)
    assert min(per_class) >= 0.5 and overall >= 0.8
    shifted = np.repeat(np.arange(10), np.array(data.TEST_CLASS_COUNTS) + np.r_[50, [0] * 8, -50])
    assert agreement(shifted)[0] < overall - 0.005


def test_test_subset_is_representative_of_the_split(dataset):
    """--test-examples 1000 takes rows spread over the class-sorted file: every class within 3 points of
    its share of the split and the mean ink within 3% of the split's, where the first 1000 rows are all zeros
    and ones."""
    rows = data.subset_rows("test", 1000)
    labels = data.test_labels()
    share = np.bincount(labels[rows], minlength=10) / len(rows)
    assert np.abs(share - np.array(data.TEST_CLASS_COUNTS) / 10_000).max() < 0.03
    ink = dataset.test.mean()
    assert abs(dataset.test[rows].mean() / ink - 1) < 0.03
    first = np.bincount(labels[:1000], minlength=10) / 1000
    assert np.abs(first - np.array(data.TEST_CLASS_COUNTS) / 10_000).max() > 0.5  # what "the first N" would do


def test_subsets_are_fixed_nested_and_whole_at_full_size():
    a, b = data.subset_rows("valid", 500), data.subset_rows("valid", 500)
    np.testing.assert_array_equal(a, b)
    assert set(a) <= set(data.subset_rows("valid", 2000)) and len(set(a)) == 500
    np.testing.assert_array_equal(data.subset_rows("test", 10_000), np.arange(10_000))
    with pytest.raises(ValueError, match="the split has 10,000"):
        data.subset_rows("test", 10_001)
