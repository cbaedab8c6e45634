"""odenet.data: IDX files, MD5 checks, the read-only data folder, augmentation and the ranks' shards."""
import gzip
import math
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_dataset, needs_data, needs_fashion, real_data_dir, synthetic_digits, write_idx
from odenet.config import Config, load_config_file
from odenet.data import load_split, read_split, read_idx
from odenet.errors import OdenetError


def test_loader_reads_self_written_idx(tmp_path):
    root = make_dataset(tmp_path, n_train=50, n_test=20)
    x, y = read_split("mnist", str(root), True, verify=False)
    ex, ey = synthetic_digits(50, 0)
    assert np.array_equal(x, ex) and np.array_equal(y, ey)
    split = load_split("mnist", str(root), False, torch.device("cpu"), verify=False)
    assert split.x.shape == (20, 1, 28, 28) and split.x.dtype == torch.float32 and split.y.dtype == torch.int64
    batches = list(split.batches(8, torch.Generator().manual_seed(0)))
    assert [len(b[1]) for b in batches] == [8, 8, 4]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(split.y.tolist())


def test_uncompressed_idx_is_accepted(tmp_path):
    x, y = synthetic_digits(10, 3)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", x, compress=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", y, compress=False)
    xx, yy = read_split("mnist", str(tmp_path), False, verify=True)
    assert np.array_equal(xx, x) and np.array_equal(yy, y)


def test_md5_failure_is_detected(tmp_path):
    root = make_dataset(tmp_path, n_train=20, n_test=20)
    with pytest.raises(OdenetError, match="MD5"):
        read_split("mnist", str(root), True, verify=True)


def test_truncated_file_is_detected(tmp_path):
    root = make_dataset(tmp_path, n_train=20, n_test=20)
    p = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(OdenetError, match="truncated|corrupt"):
        read_split("mnist", str(root), True, verify=False)
    p.write_bytes(gzip.compress(gzip.decompress(make_dataset(tmp_path / "b", 20, 20).joinpath(
        "MNIST/raw/train-images-idx3-ubyte.gz").read_bytes())[:-100]))
    with pytest.raises(OdenetError, match="truncated"):
        read_idx(p)


def test_missing_files_without_network_is_one_clear_error(tmp_path, monkeypatch):
    import odenet.data as data

    def no_network(*a, **k):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(data, "_tv_dataset", lambda name: no_network)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from odenet.config import cache_data_dir

    with pytest.raises(OdenetError, match="download failed.*--data-dir"):  # only the cache is downloaded into
        read_split("mnist", cache_data_dir(), True)
    # the test split (all that evaluate needs) names its own files, not the training files
    with pytest.raises(OdenetError, match="t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz") as e:
        read_split("mnist", cache_data_dir(), False)
    assert "train-" not in str(e.value).split("(")[0]
    # a folder the user names is only ever read: no download into it, not even its creation
    with pytest.raises(OdenetError, match="never writes into it"):
        read_split("mnist", str(tmp_path / "empty"), True)
    assert not (tmp_path / "empty").exists()


def test_read_only_folder_is_not_written(tmp_path, monkeypatch):
    """Loading never writes into the data folder: nothing is opened there for writing, no file is created, changed
    or touched. (chmod alone would not show it: it does not stop root, and CI runs as root.)"""
    import builtins
    import io
    import os

    root = make_dataset(tmp_path / "ro", n_train=30, n_test=10)

    def snapshot():
        return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}

    before = snapshot()
    writes = []
    real_open, real_os_open = builtins.open, os.open

    def inside(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and str(Path(path).resolve()).startswith(str(root.resolve()))

    def guarded_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            writes.append((str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            writes.append((str(path), flags))
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for p in root.rglob("*"):  # for a non-root user the folder is read-only too
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        for train in (True, False):
            load_split("mnist", str(root), train, torch.device("cpu"), verify=False)
    finally:
        monkeypatch.undo()
        for p in root.rglob("*"):
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert writes == []
    assert snapshot() == before


@needs_data
def test_real_mnist_loads_with_md5_and_published_class_counts():
    d = real_data_dir()
    x, y = read_split("mnist", str(d), True, verify=True)
    assert x.shape == (60000, 28, 28)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    xt, yt = read_split("mnist", str(d), False, verify=True)
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@needs_fashion
def test_real_fashion_mnist_loads_with_md5():
    x, y = read_split("fashion-mnist", str(real_data_dir()), False, verify=True)
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10


def test_random_affine_keeps_shapes_background_and_device():
    from odenet.data import background_value, random_affine

    bg = background_value("mnist")
    x = torch.full((16, 1, 28, 28), bg)
    x[:, :, 10:18, 12:16] = 2.0
    torch.manual_seed(0)
    out = random_affine(x, rotate=15, translate=3, scale=0.1, background=bg)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.allclose(out[:, :, :3, :], torch.full_like(out[:, :, :3, :], bg), atol=1e-5)  # margins stay background
    assert not torch.allclose(out, x)  # it moved the digits
    assert (out[0] != out[1]).any()  # each image gets its own transform
    ident = random_affine(x, rotate=0, translate=0, scale=0, background=bg)
    assert torch.allclose(ident, x, atol=1e-5)  # no augmentation: the identity
    # mass is roughly kept (bilinear resampling of an 8x4 block, zoom up to 10%)
    mass = ((out - bg).sum((1, 2, 3)) / (x - bg).sum((1, 2, 3)))
    assert ((mass > 0.75) & (mass < 1.3)).all()


def test_flip_mirrors_about_half_the_images_and_leaves_the_stream_of_other_runs_alone():
    from odenet.data import random_affine

    x = torch.randn(400, 1, 28, 28)
    torch.manual_seed(3)
    flipped = random_affine(x, 0, 0, 0, 0.0, flip=True)
    mirrored = torch.isclose(flipped, x.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(flipped, x, atol=1e-5).flatten(1).all(1)
    assert (mirrored ^ same).all()  # every image is either itself or exactly its mirror image
    assert 150 < int(mirrored.sum()) < 250
    # the affine draws come first: with flips on, each image is its flip-free transform, mirrored or not
    torch.manual_seed(4)
    plain = random_affine(x[:50], 10, 2, 0.1, 0.0)
    torch.manual_seed(4)
    both = random_affine(x[:50], 10, 2, 0.1, 0.0, flip=True)
    torch.manual_seed(4)
    torch.rand(50, 4)
    mirror = torch.rand(50) < 0.5
    torch.testing.assert_close(both[~mirror], plain[~mirror])
    assert not torch.allclose(both[mirror], plain[mirror])


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (9, 4, 2), (193, 64, 2), (20, 8, 4), (13, 6, 3)])
def test_rank_shards_are_disjoint_and_cover_each_batch(n, batch, world):
    from odenet.data import Split

    split = Split(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n))
    whole = [y.tolist() for _, y in split.batches(batch, torch.Generator().manual_seed(3))]
    per_rank = [list(split.shards(batch, torch.Generator().manual_seed(3), r, world)) for r in range(world)]
    for b, batch_labels in enumerate(whole):
        shards = [per_rank[r][b] for r in range(world)]
        real = [s for s in shards if s.weight == 1.0]
        # contiguous shares in rank order that together are the batch
        assert sum((s.y.tolist() for s in real), []) == batch_labels
        assert max(len(s.y) for s in real) - min(len(s.y) for s in real) <= 1
        for s in shards:
            assert s.total == len(batch_labels) and s.x.shape[1:] == (1, 1, 1)
            assert torch.equal(s.x.view(-1).long(), s.y)  # images travel with their labels
            if s.weight == 1.0:
                assert batch_labels[s.start:s.start + len(s.y)] == s.y.tolist()
            else:  # a stand-in: one image of the batch, weight 0, only when the batch is shorter than world
                assert len(batch_labels) < world and len(s.y) == 1


def test_augmentation_of_a_shard_equals_that_rows_of_the_whole_batch():
    from odenet.data import random_affine

    x = torch.randn(10, 1, 28, 28)
    torch.manual_seed(5)
    whole = random_affine(x, 10, 2, 0.1, -0.4, flip=True, elastic=1.5)
    torch.manual_seed(5)
    part = random_affine(x[4:7], 10, 2, 0.1, -0.4, rows=(4, 10), flip=True, elastic=1.5)
    torch.testing.assert_close(part, whole[4:7])


def test_elastic_field_is_smooth_with_unit_variance_at_every_pixel():
    from odenet.data import _smooth_field

    torch.manual_seed(0)
    f = _smooth_field(4000, (28, 28), 4.0, torch.device("cpu"), torch.float32)
    assert f.shape == (4000, 2, 28, 28)
    std = f.std(0)  # per pixel and axis, over the fields
    assert ((std - 1).abs() < 0.06).all()  # borders and corners move as much as the centre
    assert f.mean().abs() < 0.02
    # a Gaussian blur of sigma s correlates values d pixels apart by exp(-d^2 / (4 s^2))
    for d in (1, 4, 8):
        corr = (f[..., 6:22 - d] * f[..., 6 + d:22]).mean()
        assert abs(corr - math.exp(-d * d / 64)) < 0.04, (d, corr)
    torch.manual_seed(1)
    whole = _smooth_field(10, (28, 28), 4.0, torch.device("cpu"), torch.float32)
    torch.manual_seed(1)
    torch.testing.assert_close(_smooth_field(3, (28, 28), 4.0, torch.device("cpu"), torch.float32, (4, 10)), whole[4:7])


def test_elastic_distortion_warps_digits_and_leaves_the_stream_of_other_runs_alone():
    from odenet.data import background_value, random_affine

    bg = background_value("mnist")
    x = torch.full((64, 1, 28, 28), bg)
    x[:, :, 8:20, 12:16] = 2.0  # a stroke
    torch.manual_seed(6)
    plain = random_affine(x, 10, 2, 0.1, bg)
    change = []
    for elastic in (1e-4, 1.0, 2.0):
        torch.manual_seed(6)
        out = random_affine(x, 10, 2, 0.1, bg, elastic=elastic)
        assert out.shape == x.shape and out.dtype == x.dtype
        change.append((out - plain).abs().mean().item())
        mass = (out - bg).sum((1, 2, 3)) / (x - bg).sum((1, 2, 3))
        # the stroke is bent and locally stretched or squeezed (area changes), never erased; on average kept
        assert (mass > 0.3).all() and 0.85 < mass.mean() < 1.15
    # the affine numbers are drawn first: a vanishing field gives the elastic-free transform
    assert change[0] < 1e-3 < change[1] < change[2]
