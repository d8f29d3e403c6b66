"""ELITE's training samples restated independently from the authors' ``datasets.py`` (csyxwei/ELITE,
``OpenImagesDataset`` and ``OpenImagesDatasetWithMask``) and ``data_scripts/cal_bbox_by_seg.py``,
for pinned-draw tests of ``elite_training.data``. OpenCV, PIL, albumentations 1.3.0 and torchvision
are called as the authors call them; every random draw is given instead of drawn:

* the global stage's albumentations ``Compose`` runs as built in ``OpenImagesDataset.__init__``, with
  albumentations' own ``random`` answered from a script (:class:`ScriptedRandom`) that also checks
  each draw is asked for with the authors' probability and range;
* the local stage's ``random`` / ``np.random`` draws come in an :class:`AuthorsLocalDraws`, which
  checks each against the range the authors draw it from.

Nothing here imports the pack. Line numbers are those of ``datasets.py`` at commit 665fa85.
"""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from dataclasses import dataclass
from unittest import mock

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

PLACEHOLDER = "S"
IMAGENET_TEMPLATES_SMALL = [  # lines 17-45
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a photo of the {}", "a good photo of the {}", "a photo of one {}", "a close-up photo of the {}",
    "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}", "a photo of a nice {}",
    "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}", "a photo of the weird {}",
    "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
]
ALBUMENTATIONS_RANDOM = ("albumentations.core.composition", "albumentations.core.transforms_interface",
                         "albumentations.augmentations.geometric.rotate", "albumentations.augmentations.blur.transforms",
                         "albumentations.augmentations.geometric.transforms")


def clip_tensor(image: Image.Image, normalize: bool = True) -> torch.Tensor:
    """``get_tensor_clip`` (lines 236-243): ToTensor, then CLIP's Normalize."""
    steps = [torchvision.transforms.ToTensor()]
    if normalize:
        steps.append(torchvision.transforms.Normalize((0.48145466, 0.4578275, 0.40821073),
                                                      (0.26862954, 0.26130258, 0.27577711)))
    return torchvision.transforms.Compose(steps)(image)


def caption(add_caption: str, template: str) -> str:
    """``obtain_text`` (lines 252-277) with the template given."""
    assert template in IMAGENET_TEMPLATES_SMALL
    return add_caption + template.format(PLACEHOLDER)[1:]


# --------------------------------------------------------------------------- global stage

class ScriptedRandom:
    """Stands in for the ``random`` module inside albumentations: each call is answered by the next
    entry of the script, (name, arguments, answer), after checking the name and arguments."""

    def __init__(self, script: list[tuple]):
        self.script = list(script)

    def _answer(self, name: str, *args):
        assert self.script, f"albumentations asked for one more draw: {name}{args}"
        expected, expected_args, answer = self.script.pop(0)
        assert (name, list(args)) == (expected, list(expected_args)), (name, args, expected, expected_args)
        return answer

    def random(self):
        return self._answer("random")

    def uniform(self, a, b):
        return self._answer("uniform", a, b)

    def randint(self, a, b):
        return self._answer("randint", a, b)

    def choice(self, seq):
        return self._answer("choice", [int(v) for v in seq])


def clip_script(flip: bool, angle: float | None, blur: int | None, elastic_seed: int | None) -> list[tuple]:
    """The draws of ``Compose([Resize, HorizontalFlip(0.5), Rotate(limit=20), Blur(p=0.3),
    ElasticTransform(p=0.3)])`` for the given outcome (a p-check answers 0.0 to apply, 0.99 to skip)."""
    def check(applied):
        return ("random", (), 0.0 if applied else 0.99)
    script = [check(True), check(True), check(flip), check(angle is not None)]  # Compose, Resize, flip, Rotate
    if angle is not None:
        script.append(("uniform", (-20, 20), angle))
    script.append(check(blur is not None))
    if blur is not None:
        script.append(("choice", ([3, 5, 7],), blur))
    script.append(check(elastic_seed is not None))
    if elastic_seed is not None:
        script.append(("randint", (0, 10000), elastic_seed))
    return script


def authors_random_trans(image: np.ndarray, script: list[tuple]) -> np.ndarray:
    """``self.random_trans(image=image_tensor)`` (lines 184-190, 310) with albumentations' draws scripted."""
    with warnings.catch_warnings():  # 1.3.0 imports gaussian_filter from scipy's deprecated namespace
        warnings.simplefilter("ignore", DeprecationWarning)
        import albumentations as A

    random_trans = A.Compose([
        A.Resize(height=224, width=224),
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=20),
        A.Blur(p=0.3),
        A.ElasticTransform(p=0.3),
    ])
    scripted = ScriptedRandom(script)
    with contextlib.ExitStack() as stack:
        for module in ALBUMENTATIONS_RANDOM:
            stack.enter_context(mock.patch(f"{module}.random", scripted))
        out = random_trans(image=image)["image"]
    assert not scripted.script, f"draws left unused: {scripted.script}"
    return out


def authors_global_example(root: str, split: str, box: dict, size: int, template: str, script: list[tuple]) -> dict:
    """``OpenImagesDataset.__getitem__`` (lines 279-320) for one row of the box CSV."""
    image = Image.open(os.path.join(root, "images", split, box["ImageID"] + ".jpg")).convert("RGB")
    array = np.array(image)
    x0, x1 = float(box["XMin"]) * int(array.shape[1]), float(box["XMax"]) * int(array.shape[1])
    y0, y1 = float(box["YMin"]) * int(array.shape[0]), float(box["YMax"]) * int(array.shape[0])
    left, right = int(x0 - min(10, x0 - 0)), int(x1 + min(10, image.size[0] - x1))  # lines 301-305
    top, bottom = int(y0 - min(10, y0 - 0)), int(y1 + min(10, image.size[1] - y1))
    crop = array[top:bottom, left:right, :]
    resized = cv2.resize(np.array(crop), (size, size), interpolation=cv2.INTER_CUBIC)  # process, lines 245-250
    pixel_values = torch.from_numpy(np.array(resized).astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    augmented = Image.fromarray(authors_random_trans(crop, script))
    return {"pixel_values": pixel_values, "pixel_values_clip": clip_tensor(augmented), "text": caption("a", template)}


def read_box_rows(root: str, split: str) -> list[dict]:
    with open(os.path.join(root, "annotations", f"{split}-annotations-bbox.csv"), newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- local stage

def authors_mask_box(image_path: str, seg_path: str) -> tuple[int, int, int, int] | None:
    """``cal_bbox_by_seg.py``: (hs, he, ws, we) of the mask's outer contours, odd extents made even."""
    seg, image = cv2.imread(seg_path), cv2.imread(image_path)
    seg = cv2.resize(seg, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)[:, :, 0]
    contours = cv2.findContours(seg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    contours = contours[0] if len(contours) == 2 else contours[1]
    if not contours:
        return None
    points = np.vstack(contours) if len(contours) > 1 else contours[0]
    if len(points) < 2:
        return None
    hs, he, ws, we = points[:, :, 1].min(), points[:, :, 1].max(), points[:, :, 0].min(), points[:, :, 0].max()
    h, w = seg.shape
    if (he - hs) % 2 == 1 and he + 1 <= h:
        he += 1
    if (he - hs) % 2 == 1 and hs - 1 >= 0:
        hs -= 1
    if (we - ws) % 2 == 1 and we + 1 <= w:
        we += 1
    if (we - ws) % 2 == 1 and ws - 1 >= 0:
        ws -= 1
    if he - hs < 2 or we - ws < 2:
        return None
    return int(hs), int(he), int(ws), int(we)


def authors_scales(size: int) -> tuple[set[int], set[int]]:
    """Every side ``custom_aug`` can reach (lines 399-405): np.random.randint(size // 3, size + 1) or
    np.random.randint(int(1.2 * size), int(1.4 * size)), an odd value plus one."""
    def rounded(values):
        return {v + 1 if v % 2 == 1 else v for v in values}
    return rounded(range(size // 3, size + 1)), rounded(range(int(1.2 * size), int(1.4 * size)))


@dataclass
class AuthorsLocalDraws:
    """The draws of ``OpenImagesDatasetWithMask.__getitem__`` and of what it calls, in that order."""
    pad_size: int  # random.choice(range(10, 20)), line 500
    random_scale: int  # after the odd fix of lines 404-405
    prefix_index: int  # np.random.choice of the branch's two prefixes (lines 408, 425)
    cx: int  # rows (lines 409, 426)
    cy: int  # columns
    template: str  # random.choice(imagenet_templates_small), line 259
    resize: tuple[int, int, int] | None  # aug_cv2: (new_size, start_x, start_y), lines 450-457
    angle: int | None  # lines 461-466
    translation: tuple[int, int] | None  # (trans_x, trans_y), lines 469-475


def _custom_aug(crop: np.ndarray, size: int, d: AuthorsLocalDraws):
    """``custom_aug`` (lines 396-443) with its draws given."""
    image = Image.fromarray(crop)
    scale = d.random_scale
    small, large = authors_scales(size)
    assert scale in small | large and d.prefix_index in (0, 1)
    if scale < 0.6 * size:
        assert scale // 2 <= d.cx <= size - scale // 2 and scale // 2 <= d.cy <= size - scale // 2
        add_to_caption = ["a far away", "very small"][d.prefix_index]
        pasted = np.array(image.resize((scale, scale), resample=Image.BICUBIC)).astype(np.uint8)
        pasted = (pasted / 127.5 - 1.0).astype(np.float32)
        target = np.zeros((size, size, 3), dtype=np.float32)
        target[d.cx - scale // 2:d.cx + scale // 2, d.cy - scale // 2:d.cy + scale // 2, :] = pasted
        mask = np.zeros((size // 8, size // 8))
        mask[(d.cx - scale // 2) // 8 + 1:(d.cx + scale // 2) // 8 - 1,
             (d.cy - scale // 2) // 8 + 1:(d.cy + scale // 2) // 8 - 1] = 1.
    elif scale > size:
        assert size // 2 <= d.cx <= scale - size // 2 and size // 2 <= d.cy <= scale - size // 2
        add_to_caption = ["zoomed in", "close up"][d.prefix_index]
        target = np.array(image.resize((scale, scale), resample=Image.BICUBIC)).astype(np.uint8)
        target = (target / 127.5 - 1.0).astype(np.float32)
        target = target[d.cx - size // 2:d.cx + size // 2, d.cy - size // 2:d.cy + size // 2, :]
        mask = np.ones((size // 8, size // 8))
    else:
        add_to_caption = "a"
        target = np.array(image.resize((size, size), resample=Image.BICUBIC)).astype(np.uint8)
        target = (target / 127.5 - 1.0).astype(np.float32)
        mask = np.ones((size // 8, size // 8))
    return torch.from_numpy(target).permute(2, 0, 1), torch.from_numpy(mask[:, :, None]).permute(2, 0, 1), add_to_caption


def _aug_cv2(img: np.ndarray, seg: np.ndarray, d: AuthorsLocalDraws):
    """``aug_cv2`` (lines 445-481) with its draws given."""
    img, seg = np.array(img).copy(), np.array(seg).copy()
    if d.resize is not None:
        new_size, start_x, start_y = d.resize
        assert 224 <= new_size <= 256 and 0 <= start_x <= new_size - 224 and 0 <= start_y <= new_size - 224
        img = cv2.resize(img, (new_size, new_size), interpolation=cv2.INTER_CUBIC)
        seg = cv2.resize(seg, (new_size, new_size), interpolation=cv2.INTER_NEAREST)
        img, seg = img[start_x:start_x + 224, start_y:start_y + 224, :], seg[start_x:start_x + 224, start_y:start_y + 224, :]
    h, w = img.shape[:2]
    if d.angle is not None:
        assert -30 <= d.angle <= 30
        rotation = cv2.getRotationMatrix2D((112, 112), d.angle, 1)
        img = cv2.warpAffine(img, rotation, (w, h), flags=cv2.INTER_CUBIC)
        seg = cv2.warpAffine(seg, rotation, (w, h), flags=cv2.INTER_NEAREST)
    if d.translation is not None:
        assert all(-60 <= t <= 60 for t in d.translation)
        shift = np.float32([[1, 0, d.translation[0]], [0, 1, d.translation[1]]])
        img = cv2.warpAffine(img, shift, (w, h), flags=cv2.INTER_CUBIC)
        seg = cv2.warpAffine(seg, shift, (w, h), flags=cv2.INTER_NEAREST)
    return Image.fromarray(img), Image.fromarray(seg)


def authors_local_example(image_path: str, seg_path: str, box: tuple[int, int, int, int], size: int,
                          d: AuthorsLocalDraws, clamp: bool = False) -> dict:
    """``OpenImagesDatasetWithMask.__getitem__`` (lines 483-527) for one mask and its (hs, he, ws, we)
    box; ``clamp`` clips the resized object to [0, 255] before the uint8 cast (the pack's option)
    instead of letting the cast wrap around as on x86-64, where the authors ran."""
    assert 10 <= d.pad_size <= 19
    image = cv2.cvtColor(cv2.imread(image_path), cv2.COLOR_BGR2RGB)
    seg = cv2.imread(seg_path).astype("float")
    seg = cv2.resize(seg, image.shape[:2][::-1], interpolation=cv2.INTER_NEAREST)
    pad = list(box)
    pad[0] = int(pad[0] - min(d.pad_size, pad[0] - 0))
    pad[1] = int(pad[1] + d.pad_size)
    pad[2] = int(pad[2] - min(d.pad_size, pad[2] - 0))
    pad[3] = int(pad[3] + d.pad_size)
    crop, seg_crop = image[pad[0]:pad[1], pad[2]:pad[3], :], seg[pad[0]:pad[1], pad[2]:pad[3], :]
    pixel_values, mask_values, add_caption = _custom_aug(crop, size, d)
    object_tensor = cv2.resize(crop * (seg_crop / 255), (224, 224), interpolation=cv2.INTER_CUBIC)
    image_224 = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
    seg_224 = cv2.resize(seg_crop, (224, 224), interpolation=cv2.INTER_NEAREST)
    if clamp:
        object_tensor = np.clip(object_tensor, 0, 255)
    obj, seg_aug = _aug_cv2(object_tensor.astype("uint8"), seg_224.astype("uint8"), d)
    pixel_values_seg = clip_tensor(seg_aug, normalize=False)
    token_mask = F.interpolate(pixel_values_seg[None], (16, 16), mode="nearest")  # train_local.py, main
    return {"pixel_values": pixel_values, "mask_values": mask_values, "text": caption(add_caption, d.template),
            "pixel_values_clip": clip_tensor(Image.fromarray(image_224)), "pixel_values_obj": clip_tensor(obj),
            "pixel_values_seg": pixel_values_seg, "token_mask": token_mask[:, 0].reshape(1, -1, 1)}
