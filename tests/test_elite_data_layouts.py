"""ELITE training data in its three layouts: a plain folder, Open Images V6 (with the reference's
mask-box step) and WebDataset shards converted from either. Holding the same photos and masks,
they give the same samples for the same seed; unreadable records are skipped and counted."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_training.data import open_dataset  # noqa: E402
from elite_training.data.objects import DataError  # noqa: E402
from elite_training.data.samples import sample_generator  # noqa: E402
from elite_training.prepare_data import main as prepare  # noqa: E402

# (id, width, height, object rows [top, bottom), object columns [left, right))
OBJECTS = [("a1", 256, 128, (10, 120), (40, 180)),
           ("b2", 128, 256, (60, 180), (8, 120)),
           ("c3", 256, 256, (28, 256), (60, 210))]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """The same three photos and masks as a plain folder and as an Open Images V6 tree."""
    root = tmp_path_factory.mktemp("layouts")
    folder, oi = root / "folder", root / "openimages"
    for sub in ("folder/images", "folder/masks", "openimages/images/test", "openimages/annotations",
                "openimages/segs/test"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(5)
    boxes, segs = [], []
    for image_id, w, h, (top, bottom), (left, right) in OBJECTS:
        photo = np.clip(rng.normal(128, 60, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(photo).save(oi / "images" / "test" / f"{image_id}.jpg", quality=90)
        shutil.copy(oi / "images" / "test" / f"{image_id}.jpg", folder / "images" / f"{image_id}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[top:bottom, left:right] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{image_id}.png")
        Image.fromarray(mask).save(oi / "segs" / "test" / f"{image_id}_m0abc_0.png")
        boxes.append({"ImageID": image_id, "LabelName": "/m/0abc", "XMin": left / w, "XMax": right / w,
                      "YMin": top / h, "YMax": bottom / h})
        segs.append({"MaskPath": f"{image_id}_m0abc_0.png", "ImageID": image_id, "LabelName": "/m/0abc"})
    boxes.append({"ImageID": "c3", "LabelName": "/m/0xyz", "XMin": 0.0, "XMax": 1.0, "YMin": 0.0, "YMax": 0.95})
    boxes.append({"ImageID": "gone", "LabelName": "/m/0xyz", "XMin": 0.1, "XMax": 0.5, "YMin": 0.1, "YMax": 0.5})
    for name, rows in (("test-annotations-bbox.csv", boxes), ("test-annotations-object-segmentation.csv", segs)):
        with open(oi / "annotations" / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert prepare(["bboxes", str(oi)]) == 0
    found = {"folder": folder, "openimages": oi}
    for stage in ("global", "local"):
        for source in ("folder", "openimages"):
            out = root / f"shards-{stage}-from-{source}"
            assert prepare(["shards", str(found[source]), str(out), "--stage", stage, "--samples-per-shard", "2"]) == 0
            found[f"shards-{stage}-from-{source}"] = out
    return found


def test_the_mask_box_step_follows_the_reference(layouts):
    """cal_bbox_by_seg: inclusive extreme rows/columns; an odd extent grows by one at the far side."""
    boxes = json.loads((layouts["openimages"] / "segs" / "test_bbox_dict.json").read_text())
    # a1: rows 10..119 (odd extent 109 -> bottom 120), columns 40..179 (139 -> 180)
    assert boxes["a1_m0abc_0.png"] == [10, 120, 40, 180]
    # b2: rows 60..179 (odd 119 -> 180), columns 8..119 (odd 111 -> 120)
    assert boxes["b2_m0abc_0.png"] == [60, 180, 8, 120]
    # c3 touches the bottom: rows 28..255 (odd 227 -> 256, the image height, still allowed), columns 60..209
    assert boxes["c3_m0abc_0.png"] == [28, 256, 60, 210]


@pytest.mark.parametrize("stage", ["global", "local"])
def test_every_layout_gives_the_same_samples_for_the_same_seed(layouts, stage):
    names = ["folder", "openimages", f"shards-{stage}-from-folder", f"shards-{stage}-from-openimages"]
    datasets = {name: open_dataset(str(layouts[name]), stage, resolution=64) for name in names}
    assert {len(d) for d in datasets.values()} == {3}
    assert type(datasets[names[2]]).__name__ == "ShardDataset"
    manifest = json.loads((layouts[names[2]] / "shards.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 1]
    for step in range(4):
        for index in range(3):
            samples = [d.sample(index, sample_generator(7, step, index)) for d in datasets.values()]
            first = samples[0]
            for other in samples[1:]:
                assert other.caption == first.caption
                for field in vars(first):
                    if field != "caption":
                        assert torch.equal(getattr(other, field), getattr(first, field)), (stage, field, index)
    # different records give different samples (the comparison above can fail)
    a = datasets["folder"].sample(0, sample_generator(7, 0, 0))
    b = datasets["folder"].sample(1, sample_generator(7, 0, 0))
    assert not torch.equal(a.pixels_clip, b.pixels_clip)


def test_global_crop_is_the_reference_box_arithmetic(layouts):
    """a1's box (40..180 x 10..120 in a 256 x 128 photo) padded by 10 px within the image."""
    dataset = open_dataset(str(layouts["openimages"]), "global")
    # c3's second box covers 0.95 of the photo (over 0.8: filtered); "gone"'s photo is missing (skipped)
    assert len(dataset) == 3 and dataset.skipped == 1
    _, obj = dataset.load_at(0)
    assert obj.crop == (30, 0, 190, 128)


def test_unreadable_records_are_skipped_and_counted(layouts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(layouts["shards-global-from-folder"], broken)
    with tarfile.open(broken / "shard-000000.tar") as tar:  # sample 0's photo replaced by garbage
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(broken / "shard-000000.tar", "w") as tar:
        for member, data in members:
            data = b"not an image" if member.name.endswith(".jpg") and member.name.startswith("000000000") else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    dataset = open_dataset(str(broken), "global", resolution=64)
    reference = open_dataset(str(layouts["folder"]), "global", resolution=64)
    got = dataset.sample(0, sample_generator(1, 0, 0))  # record 0 unreadable: record 1 takes its place
    assert dataset.bad == 1
    assert torch.equal(got.pixels, reference.sample(1, sample_generator(1, 0, 0)).pixels)


def test_layout_errors_say_what_to_do(layouts, tmp_path):
    with pytest.raises(DataError, match="bboxes"):
        bare = tmp_path / "oi"
        shutil.copytree(layouts["openimages"], bare)
        (bare / "segs" / "test_bbox_dict.json").unlink()
        open_dataset(str(bare), "local")
    with pytest.raises(DataError, match="written for the global stage"):
        open_dataset(str(layouts["shards-global-from-folder"]), "local")
    with pytest.raises(DataError, match="images/"):
        open_dataset(str(tmp_path), "global")
    assert prepare(["shards", str(layouts["folder"]), str(layouts["folder"]), "--stage", "global"]) == 2


def test_decompression_bombs_and_one_pixel_photos_are_skipped_and_counted_in_every_layout(layouts, tmp_path, caplog):
    """A photo that declares 30000x30000 pixels, or has a single pixel, is left out with a warning
    naming it, in the folder, Open Images and shard layouts; the run goes on with the rest."""
    from elite_test_pack.hostile_files import png_header_only

    folder = tmp_path / "folder"
    shutil.copytree(layouts["folder"], folder)
    (folder / "images" / "bomb.png").write_bytes(png_header_only(30000, 30000))
    Image.new("RGB", (1, 1)).save(folder / "images" / "dot.png")
    with caplog.at_level("WARNING"):
        dataset = open_dataset(str(folder), "global", resolution=64)
    assert len(dataset) == len(OBJECTS) and dataset.skipped == 2
    assert "decompression bomb" in caplog.text and "1x1 pixels" in caplog.text and "2 record(s) skipped" in caplog.text

    oi = tmp_path / "openimages"
    shutil.copytree(layouts["openimages"], oi)
    (oi / "images" / "test" / "a1.jpg").write_bytes(png_header_only(30000, 30000))
    dataset = open_dataset(str(oi), "global", resolution=64)
    caplog.clear()
    with caplog.at_level("WARNING"):
        dataset.sample(0, sample_generator(1, 0, 0))
    assert dataset.bad >= 1 and "decompression bomb" in caplog.text

    shards = tmp_path / "shards"
    shutil.copytree(layouts["shards-global-from-folder"], shards)
    with tarfile.open(shards / "shard-000000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shards / "shard-000000.tar", "w") as tar:
        for member, data in members:
            if member.name.startswith("000000000") and member.name.endswith((".jpg", ".png")):
                data = png_header_only(30000, 30000)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    dataset = open_dataset(str(shards), "global", resolution=64)
    caplog.clear()
    with caplog.at_level("WARNING"):
        dataset.sample(0, sample_generator(1, 0, 0))
    assert dataset.bad == 1 and "decompression bomb" in caplog.text


def test_a_full_disk_leaves_no_shards_and_says_so(layouts, tmp_path, monkeypatch, caplog):
    import errno

    from elite_training.data import shards as shard_module

    real_add, calls = shard_module._add, []

    def add_until_full(tar, name, data):
        calls.append(name)
        if len(calls) > 4:  # the second shard's first sample: one shard complete, one half-written
            raise OSError(errno.ENOSPC, "No space left on device")
        real_add(tar, name, data)

    monkeypatch.setattr(shard_module, "_add", add_until_full)
    out = tmp_path / "out"
    with caplog.at_level("ERROR"):
        code = prepare(["shards", str(layouts["folder"]), str(out), "--stage", "global", "--samples-per-shard", "2"])
    assert code == 2
    assert "is full" in caplog.text and str(out) in caplog.text
    assert sorted(p.name for p in out.iterdir()) == []  # neither the finished shard nor the partial one stays


def test_shards_never_overwrite_a_shard_set(layouts):
    out = layouts["shards-global-from-folder"]
    assert prepare(["shards", str(layouts["folder"]), str(out), "--stage", "global"]) == 2
    assert json.loads((out / "shards.json").read_text())["stage"] == "global"
