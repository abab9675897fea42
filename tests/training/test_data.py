from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_guard.errors import ConfigError, DataError
from edge_guard.training.data import GTSRB_CLASS_NAMES, Dataset, load_dataset, split_by_track
from tests.training.synthetic import SHAPES, make_dataset, write_cifar, write_gtsrb, write_ppm


def load(path: Path, tmp_path: Path, **kw) -> Dataset:
    return load_dataset(path, cache_dir=tmp_path / "cache", **kw)


def test_gtsrb_official_layout(tmp_path: Path) -> None:
    written = write_gtsrb(tmp_path / "g", n_classes=3, tracks=2, per_track=3)
    ds = load(tmp_path / "g", tmp_path)
    assert ds.images.shape == (18, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and ds.tracks.dtype == np.int64
    assert ds.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    # TTTTT_IIIII.ppm -> class * 100000 + track: globally unique across classes
    assert ds.tracks.tolist()[:6] == [0, 0, 0, 1, 1, 1] and ds.tracks[6] == 100_000
    assert ds.classes == ("circle", "square", "triangle")  # from signnames.csv
    # images are 32x32 already: roi="auto" keeps them whole, pixel for pixel
    np.testing.assert_array_equal(ds.images[7], written["00001/00000_00001.ppm"])
    assert "cropped 0" in ds.report.roi and ds.report.layout == "gtsrb"


def test_gtsrb_root_may_be_final_training_or_images(tmp_path: Path) -> None:
    write_gtsrb(tmp_path / "g", n_classes=2, tracks=1, per_track=2)
    a = load(tmp_path / "g", tmp_path)
    for sub in ("Final_Training", "Final_Training/Images"):
        b = load(tmp_path / "g" / sub, tmp_path)
        np.testing.assert_array_equal(a.images, b.images)
        assert b.classes == a.classes  # signnames.csv found above the data


def test_builtin_gtsrb_names_without_signnames(tmp_path: Path) -> None:
    write_gtsrb(tmp_path / "g", n_classes=2, tracks=1, per_track=1, signnames=False)
    ds = load(tmp_path / "g", tmp_path)
    assert len(ds.classes) == 43 and ds.classes[14] == "Stop" == GTSRB_CLASS_NAMES[14]


def test_gtsrb_official_test_layout(tmp_path: Path) -> None:
    root = tmp_path / "g"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i, img in enumerate(imgs):
        write_ppm(root / "Final_Test" / "Images" / f"{i:05d}.ppm", img)
        rows.append(f"{i:05d}.ppm;32;32;0;0;32;32;{i + 5}")
    (root / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    ds = load(root, tmp_path, split="test")
    assert ds.labels.tolist() == [5, 6, 7] and (ds.tracks == -1).all()
    np.testing.assert_array_equal(ds.images, imgs)
    with pytest.raises(DataError, match="train"):
        load(root, tmp_path, split="train")


def test_kaggle_layout(tmp_path: Path) -> None:
    root = tmp_path / "k"
    rng = np.random.default_rng(1)
    rows = ["Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path"]
    for c in range(2):
        for t in range(2):
            rel = f"Train/{c}/{c:05d}_{t:05d}_00000.png"
            write_ppm(root / rel, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            rows.append(f"32,32,0,0,32,32,{c},{rel}")
    (root / "Train.csv").write_text("\n".join(rows) + "\n")
    ds = load(root, tmp_path)
    assert ds.report.layout == "gtsrb-kaggle" and len(ds) == 4
    assert ds.tracks.tolist() == [0, 1, 100_000, 100_001] and ds.labels.tolist() == [0, 0, 1, 1]
    assert len(ds.classes) == 43
    with pytest.raises(DataError, match="Test.csv"):
        load(root, tmp_path, split="test")


def test_cifar_layout(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path / "c", n=6)
    ds = load(tmp_path / "c", tmp_path)
    np.testing.assert_array_equal(ds.images, images)  # CHW rows -> HWC, RGB
    assert ds.labels.tolist() == labels.tolist() and ds.classes == ("cat", "dog", "ship")
    assert "data_batch_2" in " ".join(ds.report.notes)  # missing batches are reported
    assert len(load(tmp_path / "c" / "cifar-10-batches-py", tmp_path, split="test")) == 6
    assert load(tmp_path / "c", tmp_path, size=16).images.shape == (6, 16, 16, 3)


def test_class_folder_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for split, n in (("train", 3), ("test", 1)):
        for name in ("10", "2"):
            for i in range(n):
                write_ppm(tmp_path / "f" / split / name / f"{i}.png", rng.integers(0, 256, (40, 48, 3), np.uint8))
    ds = load(tmp_path / "f", tmp_path)
    assert ds.classes == ("2", "10")  # numeric folder names sort as numbers
    assert ds.images.shape == (6, 32, 32, 3) and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(load(tmp_path / "f", tmp_path, split="test")) == 2
    assert load(tmp_path / "f" / "train", tmp_path, size=(24, 16)).images.shape == (6, 24, 16, 3)
    # one set of class folders is a training set: asking it for a test split must not return it again
    with pytest.raises(DataError, match="test/<class>"):
        load(tmp_path / "f" / "train", tmp_path, split="test")


def test_unknown_layout_names_supported_layouts(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="cifar10.*folders"):
        load(tmp_path / "x", tmp_path)
    with pytest.raises(DataError, match="existing directory"):
        load(tmp_path / "missing", tmp_path)
    with pytest.raises(ConfigError, match="roi"):
        load(tmp_path / "x", tmp_path, roi="maybe")


def _roi_image(root: Path, disk: int, csv_size: int, roi: tuple[int, int, int, int]) -> None:
    """Red image with a green square where the (scaled) ROI is; CSV sizes in 'original' pixels."""
    img = np.zeros((disk, disk, 3), np.uint8)
    img[..., 0] = 255
    s = disk / csv_size
    x1, y1, x2, y2 = (int(v * s) for v in roi)
    img[y1:y2, x1:x2] = (0, 255, 0)
    folder = root / "Final_Training" / "Images" / "00000"
    write_ppm(folder / "00000_00000.ppm", img)
    (folder / "GT-00000.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
                                         f"00000_00000.ppm;{csv_size};{csv_size};{';'.join(map(str, roi))};0\n")


def test_roi_is_scaled_by_disk_size_over_csv_size(tmp_path: Path) -> None:
    _roi_image(tmp_path / "g", disk=40, csv_size=80, roi=(20, 20, 60, 60))  # green at 10..30 on disk
    ds = load(tmp_path / "g", tmp_path, roi="auto")  # 40x40 on disk != 32x32: auto crops
    green = ds.images[0]
    assert green[..., 1].min() >= 250 and green[..., 0].max() <= 5, "crop must cover exactly the scaled ROI"
    assert "cropped 1" in ds.report.roi
    whole = load(tmp_path / "g", tmp_path, roi="none").images[0]
    assert whole[..., 0].max() == 255  # red border kept without the crop


def test_roi_auto_skips_when_already_target_size(tmp_path: Path) -> None:
    _roi_image(tmp_path / "g", disk=32, csv_size=64, roi=(16, 16, 48, 48))
    auto = load(tmp_path / "g", tmp_path, roi="auto")
    assert auto.images[0][0, 0].tolist() == [255, 0, 0] and "cropped 0" in auto.report.roi
    crop = load(tmp_path / "g", tmp_path, roi="crop")
    assert crop.images[0][..., 1].min() >= 250 and "cropped 1" in crop.report.roi


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    write_gtsrb(tmp_path / "g", n_classes=2, tracks=2, per_track=2)
    bad = tmp_path / "g" / "Final_Training" / "Images" / "00001" / "00000_00001.ppm"
    bad.write_bytes(b"P6\n32 32\n255\n" + b"\x00" * 10)  # truncated
    with pytest.raises(DataError, match="00001/00000_00001.ppm"):
        load(tmp_path / "g", tmp_path)
    ds = load(tmp_path / "g", tmp_path, skip_bad=True)
    assert len(ds) == 7 and ds.report.skipped == 1 and "00000_00001.ppm" in ds.report.skipped_files[0]
    assert "1 skipped" in ds.report.summary()
    bad.unlink()
    with pytest.raises(DataError, match="00000_00001.ppm"):
        load(tmp_path / "g", tmp_path)


def test_cache_hit_returns_same_arrays_and_invalidates(tmp_path: Path) -> None:
    write_gtsrb(tmp_path / "g", n_classes=2, tracks=2, per_track=2)
    first = load(tmp_path / "g", tmp_path)
    assert first.report.cache.startswith("miss (written")
    second = load(tmp_path / "g", tmp_path)
    assert second.report.cache.startswith("hit")
    for name in ("images", "labels", "tracks"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert second.classes == first.classes and second.report.roi == first.report.roi
    assert load(tmp_path / "g", tmp_path, size=16).report.cache.startswith("miss")  # options are in the key
    assert load(tmp_path / "g", tmp_path, seed=1).report.cache.startswith("hit")  # no --limit: the seed is unused
    assert load(tmp_path / "g", tmp_path, limit=3, seed=1).report.cache.startswith("miss")
    assert load(tmp_path / "g", tmp_path, limit=3, seed=2).report.cache.startswith("miss")  # another subset
    csv_file = tmp_path / "g" / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    csv_file.write_text(csv_file.read_text().replace("00000_00001.ppm;64", "00000_00001.ppm;65"))
    os.utime(csv_file, ns=(1, 1))
    assert load(tmp_path / "g", tmp_path).report.cache.startswith("miss")
    assert load(tmp_path / "g", tmp_path, cache=False).report.cache == "off"


def test_limit_keeps_a_seeded_subset(tmp_path: Path) -> None:
    write_gtsrb(tmp_path / "g", n_classes=2, tracks=2, per_track=3)
    a = load(tmp_path / "g", tmp_path, limit=5, seed=3)
    b = load(tmp_path / "g", tmp_path, limit=5, seed=3, cache=False)
    assert len(a) == 5 and "kept 5 of 12" in a.report.summary()
    np.testing.assert_array_equal(a.images, b.images)


def test_split_by_track_never_shares_a_track() -> None:
    ds = make_dataset(n_per_class=40, n_classes=4, per_track=5)  # 8 tracks per class
    train, val = split_by_track(ds, val_fraction=0.25, seed=0)
    assert len(train) + len(val) == len(ds)
    assert not set(train.tracks.tolist()) & set(val.tracks.tolist())
    assert sorted(set(val.labels.tolist())) == [0, 1, 2, 3]  # stratified: every class in val
    assert len(val) == 4 * 2 * 5  # round(8 * 0.25) = 2 tracks of 5 images per class
    again, _ = split_by_track(ds, val_fraction=0.25, seed=0)
    np.testing.assert_array_equal(again.tracks, train.tracks)
    other, _ = split_by_track(ds, val_fraction=0.25, seed=1)
    assert set(other.tracks.tolist()) != set(train.tracks.tolist())
    assert "split by track" in train.report.notes[-1]


def test_split_without_tracks_is_a_random_stratified_split() -> None:
    ds = make_dataset(n_per_class=10, n_classes=3)
    ds = Dataset(ds.images, ds.labels, np.full(len(ds), -1, np.int64), ds.classes)
    train, val = split_by_track(ds, val_fraction=0.2, seed=0)
    assert len(val) == 6 and np.bincount(val.labels).tolist() == [2, 2, 2]
    with pytest.raises(ConfigError):
        split_by_track(ds, val_fraction=1.0)


def test_shapes_helper_draws_distinct_classes() -> None:
    # guards the synthetic data the other training tests rely on
    ds = make_dataset(n_per_class=2)
    assert ds.classes == SHAPES and cv2.absdiff(ds.images[0], ds.images[2]).mean() > 5
