"""ELITE's training samples against the authors' ``datasets.py``, draw for draw: the pack's draws of a
sample are handed to an independent restatement of the authors' code path
(elite_test_pack/reference_datasets.py: OpenCV, PIL, albumentations 1.3.0 and torchvision called as
the authors call them), and every tensor that enters the models must be equal bit for bit: the UNet
target and its valid-region mask, the CLIP inputs, the masked object, its mask and the 16 x 16 token
mask, and the caption. On ELITE's own test images laid out as Open Images (../shared; skipped without
it); the albumentations restatement and the scale draws are also checked on synthetic data."""

from __future__ import annotations

import importlib.metadata
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DIR
from PIL import Image

from elite_test_pack import reference_datasets as authors

pytestmark = pytest.mark.comfyui_independent  # the trainers never import ComfyUI code

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from elite_core.elite.objectives import object_token_mask  # noqa: E402
from elite_training.data import open_dataset  # noqa: E402
from elite_training.data.augmentations import ClipDraws, JointDraws, clip_augment, draw_clip  # noqa: E402
from elite_training.data.samples import (  # noqa: E402
    TEMPLATES,
    GlobalDraws,
    LocalDraws,
    ScaleDraws,
    draw_global,
    draw_local,
    draw_scale,
    make_global_sample,
    make_local_sample,
    sample_generator,
)
from elite_training.elite import parse_args  # noqa: E402
from elite_training.prepare_data import main as prepare  # noqa: E402

TEST_IMAGES = SHARED_DIR / "data" / "elite_test_datasets"
needs_test_images = pytest.mark.skipif(not TEST_IMAGES.is_dir(), reason=f"needs ELITE's test images in {TEST_IMAGES}")


def _albumentations_version() -> str | None:
    try:
        return importlib.metadata.version("albumentations")
    except importlib.metadata.PackageNotFoundError:
        return None


needs_albumentations = pytest.mark.skipif(_albumentations_version() != "1.3.0",
                                          reason="needs albumentations 1.3.0 (requirements-dev.txt)")
RESOLUTION = 512


def script_of(draws: ClipDraws) -> list[tuple]:
    return authors.clip_script(draws.flip, draws.angle, draws.blur, draws.elastic_seed)


ALL_CLIP = ClipDraws(flip=True, angle=-13.25, blur=5, elastic_seed=4321)
CLIP_CASES = [ClipDraws(), ClipDraws(flip=True), ClipDraws(angle=17.9), ClipDraws(blur=3), ClipDraws(blur=7),
              ClipDraws(elastic_seed=0), ClipDraws(elastic_seed=10_000), ALL_CLIP]


@needs_albumentations
def test_the_clip_augmentation_is_albumentations_1_3_0():
    """Each transform alone, all together and generator draws, on photos of several shapes (one
    already 224 x 224, which Resize leaves alone)."""
    rng = np.random.default_rng(3)
    cases = CLIP_CASES + [draw_clip(sample_generator(11, step, 0)) for step in range(6)]
    for shape in ((97, 150), (224, 224), (300, 260)):
        photo = np.clip(rng.normal(128, 70, (*shape, 3)), 0, 255).astype(np.uint8)
        photo = np.asarray(Image.fromarray(photo).resize(shape[::-1]))  # a little smoothness
        for draws in cases:
            ours, theirs = clip_augment(photo, draws), authors.authors_random_trans(photo, script_of(draws))
            assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == theirs.shape == (224, 224, 3)
            assert np.array_equal(ours, theirs), (shape, draws, np.abs(ours.astype(int) - theirs).max())


def test_the_caption_templates_are_the_authors():
    assert list(TEMPLATES) == authors.IMAGENET_TEMPLATES_SMALL


@pytest.mark.parametrize("resolution", [512, 64])
def test_scale_draws_reach_exactly_the_authors_sides(resolution):
    """custom_aug's sides: odd draws rounded up (never down), 2/3 of them from the small range."""
    small, large = authors.authors_scales(resolution)
    gen = torch.Generator().manual_seed(5)
    draws = [draw_scale(gen, resolution) for _ in range(12_000)]
    sides = [d.side for d in draws]
    assert set(sides) == small | large
    assert abs(sum(s in small for s in sides) / len(sides) - 2 / 3) < 0.02
    assert {d.prefix for d in draws} == {0, 1}
    for d in draws[:500]:  # centres in the ranges the authors draw them from
        if d.side < 0.6 * resolution:
            assert d.side // 2 <= min(d.row, d.col) and max(d.row, d.col) <= resolution - d.side // 2
        elif d.side > resolution:
            assert resolution // 2 <= min(d.row, d.col) and max(d.row, d.col) <= d.side - resolution // 2


# --------------------------------------------------------------------------- ELITE's test images as Open Images

@pytest.fixture(scope="module")
def open_images(tmp_path_factory) -> Path:
    """ELITE's 11 test images and masks as an Open Images V6 test split, one object each; every other
    mask is stored at 3/4 of its photo's size, so the masks' nearest resize is exercised too."""
    root = tmp_path_factory.mktemp("elite-test-images")
    for sub in ("images/test", "segs/test", "annotations"):
        (root / sub).mkdir(parents=True)
    boxes, segs = [], []
    for n, mask_path in enumerate(sorted(TEST_IMAGES.glob("*_bg.png"))):
        stem = mask_path.name[:-len("_bg.png")]
        image_id = f"elite{stem}"  # the mask is <image_id>_<label>_<n>.png: the part before "_" names the photo
        photo = next(p for p in (TEST_IMAGES / f"{stem}.jpg", TEST_IMAGES / f"{stem}.png") if p.is_file())
        if photo.suffix == ".jpg":
            shutil.copy(photo, root / "images" / "test" / f"{image_id}.jpg")
        else:
            Image.open(photo).convert("RGB").save(root / "images" / "test" / f"{image_id}.jpg", quality=95)
        mask = Image.open(mask_path).convert("RGB")
        width, height = mask.size
        if n % 2:
            mask = mask.resize((width * 3 // 4, height * 3 // 4), Image.NEAREST)
        mask.save(root / "segs" / "test" / f"{image_id}_m0abc_0.png")
        rows, cols = np.nonzero(np.asarray(Image.open(mask_path).convert("L")) > 0)
        boxes.append(dict(ImageID=image_id, LabelName="/m/0abc", XMin=int(cols.min()) / width,
                          XMax=(int(cols.max()) + 1) / width, YMin=int(rows.min()) / height, YMax=(int(rows.max()) + 1) / height))
        segs.append(dict(MaskPath=f"{image_id}_m0abc_0.png", ImageID=image_id, LabelName="/m/0abc"))
    for name, rows in (("test-annotations-bbox.csv", boxes), ("test-annotations-object-segmentation.csv", segs)):
        header = list(rows[0])
        lines = [",".join(header)] + [",".join(repr(r[k]) if isinstance(r[k], float) else str(r[k]) for k in header)
                                      for r in rows]
        (root / "annotations" / name).write_text("\n".join(lines) + "\n")
    assert prepare(["bboxes", str(root)]) == 0
    return root


def global_cases(index: int) -> list[GlobalDraws]:
    explicit = [GlobalDraws(3, ClipDraws()), GlobalDraws(0, ALL_CLIP)]
    return explicit + [draw_global(sample_generator(2, step, index)) for step in range(3)]


@needs_test_images
@needs_albumentations
def test_global_samples_are_the_authors(open_images):
    dataset = open_dataset(str(open_images), "global", RESOLUTION)
    rows = {row["ImageID"]: row for row in authors.read_box_rows(str(open_images), "test")}
    assert len(dataset) >= 5  # the others' boxes cover over 0.8 of their photo: left out by both
    for index, record in enumerate(dataset.records):
        obj = dataset.load(record)
        for draws in global_cases(index):
            ours = make_global_sample(obj, draws, RESOLUTION)
            theirs = authors.authors_global_example(str(open_images), "test", rows[record[0]], RESOLUTION,
                                                    TEMPLATES[draws.template], script_of(draws.clip))
            assert ours.caption == theirs["text"]
            assert torch.equal(ours.pixels, theirs["pixel_values"]), (record[0], draws)
            assert torch.equal(ours.pixels_clip, theirs["pixel_values_clip"]), (record[0], draws)


JOINT_ALL = JointDraws(resize=(245, 7, 19), angle=-23, shift=(41, -58))
SCALES = {"plain": ScaleDraws(RESOLUTION),
          "small": ScaleDraws(200, row=140, col=300, prefix=1),
          "small at the edge": ScaleDraws(306, row=153, col=RESOLUTION - 153),
          "zoomed": ScaleDraws(700, row=256, col=444, prefix=1),
          "zoomed, the largest side": ScaleDraws(716, row=458, col=256)}


def local_cases(index: int) -> list[LocalDraws]:
    """Every target branch, with and without the joint augmentation (alternating over the photos), and
    two generator draws."""
    explicit = [LocalDraws(10 + index % 10, scale, index % 27, JOINT_ALL if (index + n) % 2 else JointDraws())
                for n, scale in enumerate(SCALES.values())]
    return explicit + [draw_local(sample_generator(4, step, index), RESOLUTION) for step in range(2)]


def authors_draws(d: LocalDraws) -> authors.AuthorsLocalDraws:
    return authors.AuthorsLocalDraws(d.pad, d.scale.side, d.scale.prefix, d.scale.row, d.scale.col, TEMPLATES[d.template],
                                     d.joint.resize, d.joint.angle, d.joint.shift)


def local_paths(root: Path, name: str) -> tuple[str, str]:
    return str(root / "images" / "test" / (name.split("_")[0] + ".jpg")), str(root / "segs" / "test" / name)


def local_differences(ours, theirs) -> dict[str, float]:
    """max |ours - theirs| of every tensor of the sample that enters the models."""
    pairs = {"pixels": (ours.pixels, theirs["pixel_values"]), "mask": (ours.mask, theirs["mask_values"]),
             "pixels_clip": (ours.pixels_clip, theirs["pixel_values_clip"]),
             "pixels_object": (ours.pixels_object, theirs["pixel_values_obj"]),
             "object_segmentation": (ours.object_segmentation, theirs["pixel_values_seg"]),
             "token_mask": (object_token_mask(ours.object_segmentation[None]), theirs["token_mask"])}
    for name, (a, b) in pairs.items():
        assert a.shape == b.shape, (name, a.shape, b.shape)
    return {name: (a.double() - b.double()).abs().max().item() for name, (a, b) in pairs.items()}


def assert_local_equal(ours, theirs, where) -> None:
    assert ours.caption == theirs["text"], where
    differences = local_differences(ours, theirs)
    assert not any(differences.values()), (where, differences)
    assert ours.mask.dtype == torch.float32 and ours.pixels.dtype == torch.float32


@needs_test_images
def test_local_samples_are_the_authors(open_images):
    """Plain, small (pasted on 0.0, i.e. mid-grey) and zoomed targets, with and without the joint
    augmentation, and generator draws; the mask boxes are the authors' contour boxes."""
    dataset = open_dataset(str(open_images), "local", RESOLUTION)
    assert len(dataset) >= 5
    seen = set()
    for index, record in enumerate(dataset.records):
        image_path, seg_path = local_paths(open_images, record[0])
        assert authors.authors_mask_box(image_path, seg_path) == tuple(record[1:])
        obj = dataset.load(record)
        for draws in local_cases(index):
            ours = make_local_sample(obj, draws, RESOLUTION, 8)
            theirs = authors.authors_local_example(image_path, seg_path, tuple(record[1:]), RESOLUTION, authors_draws(draws))
            assert_local_equal(ours, theirs, (record[0], draws))
            if draws.scale.side < 0.6 * RESOLUTION:  # the paste background is 0.0 in [-1, 1], not black (-1)
                top, left = draws.scale.row - draws.scale.side // 2, draws.scale.col - draws.scale.side // 2
                outside = torch.ones(RESOLUTION, RESOLUTION, dtype=torch.bool)
                outside[top:top + draws.scale.side, left:left + draws.scale.side] = False
                assert (ours.pixels[:, outside] == 0).all() and ours.mask.sum() > 0
                seen.add("small")
            seen.add("zoomed" if draws.scale.side > RESOLUTION else "plain")
    assert seen == {"small", "zoomed", "plain"}


@needs_test_images
def test_the_masked_object_wraps_like_the_authors_cast_unless_clamped(open_images):
    """The default reproduces the authors' uint8 wrap-around of the cubic overshoot; the trainer's
    --clamp-object-resize clamps it instead; on these photos the two differ."""
    assert parse_args(["--pretrained", "p", "--image-encoder", "e", "--data", "d", "--output-dir", "o",
                       "--clamp-object-resize"]).clamp_object_resize
    clamped_data = open_dataset(str(open_images), "local", RESOLUTION, clamp_object_resize=True)
    assert clamped_data.clamp_object_resize
    default_data = open_dataset(str(open_images), "local", RESOLUTION)
    differing = 0
    for index, record in enumerate(default_data.records[:4]):
        image_path, seg_path = local_paths(open_images, record[0])
        gen_seed = (6, 0, index)
        wrapped = default_data.sample(index, sample_generator(*gen_seed))
        clamped = clamped_data.sample(index, sample_generator(*gen_seed))
        draws = authors_draws(draws_of(gen_seed))
        box = tuple(record[1:])
        assert_local_equal(wrapped, authors.authors_local_example(image_path, seg_path, box, RESOLUTION, draws), record[0])
        assert_local_equal(clamped, authors.authors_local_example(image_path, seg_path, box, RESOLUTION, draws,
                                                                  clamp=True), record[0])
        differing += int((wrapped.pixels_object != clamped.pixels_object).any(0).sum())
    assert differing > 0


def draws_of(gen_seed: tuple[int, int, int]) -> LocalDraws:
    return draw_local(sample_generator(*gen_seed), RESOLUTION)
