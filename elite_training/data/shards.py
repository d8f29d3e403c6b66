"""WebDataset tar shards for ELITE's training data: a multi-node run reads its samples straight
from the shards, with no shared file index and no directory of loose files.

A shard set is a folder::

    shards.json              {"format": "elite-webdataset", "stage": ..., "shards": [{"name", "samples"}]}
    shard-000000.tar ...     per sample <key>.jpg|.png (the photo's own bytes), <key>.mask.png (the
                             object mask, local stage), <key>.json ({"crop"|"object_box", "caption"})

The tar members follow WebDataset's naming (one key, several extensions), so other WebDataset tools
read the shards too. :func:`write_shards` converts any layout (a folder, Open Images) for one stage:
the shards hold the same photos, masks and boxes, so the same seed gives the same samples. A process
opens a shard when it first draws from it and reads only the members it needs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import numpy as np
from PIL import Image

from elite_core.common.files import open_image, write_atomically

from .folder import ObjectDataset
from .objects import DataError, ObjectImage

log = logging.getLogger("elite.train.data")

MANIFEST = "shards.json"
FORMAT = "elite-webdataset"
PARTIAL = ".partial"  # a shard being written


def is_shard_set(root: str) -> bool:
    return os.path.isfile(os.path.join(root, MANIFEST))


def _image_bytes(path: str | None, obj: ObjectImage) -> tuple[bytes, str]:
    """The photo as stored: the source file's bytes when decoding them gives ``obj.image`` as loaded
    (no EXIF rotation, already RGB), else a lossless PNG of it."""
    if path is not None:
        with open_image(path) as img:
            plain = img.mode == "RGB" and img.getexif().get(0x0112, 1) == 1 and img.format in ("JPEG", "PNG")
            ext = "jpg" if img.format == "JPEG" else "png"
        if plain:
            with open(path, "rb") as f:
                return f.read(), ext
    buffer = io.BytesIO()
    obj.image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def _png(mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _finish(tar: tarfile.TarFile, out_dir: str, name: str) -> None:
    """Close a shard written under its temporary name and give it its own."""
    tar.close()
    os.replace(os.path.join(out_dir, name + PARTIAL), os.path.join(out_dir, name))


def write_shards(dataset: ObjectDataset, out_dir: str, samples_per_shard: int = 1000) -> dict:
    """Every readable record of ``dataset`` into tar shards in ``out_dir``. Returns the manifest."""
    if os.path.exists(os.path.join(out_dir, MANIFEST)):
        raise DataError(f"{out_dir} already holds a shard set ({MANIFEST}): write the new shards to an empty folder, "
                        "or delete the old set first.")
    os.makedirs(out_dir, exist_ok=True)
    shards, tar, count, bad = [], None, 0, 0
    done = False
    try:
        for position, record in enumerate(dataset.records):
            try:
                obj = dataset.load(record)
                data, ext = _image_bytes(dataset.photo_path(record), obj)
            except (OSError, ValueError, SyntaxError) as exc:
                bad += 1
                log.warning("leaving out %s: %s", dataset.describe(record), exc)
                continue
            if tar is None or count == samples_per_shard:
                if tar is not None:
                    _finish(tar, out_dir, shards[-1]["name"])
                shards.append({"name": f"shard-{len(shards):06d}.tar", "samples": 0})
                tar, count = tarfile.open(os.path.join(out_dir, shards[-1]["name"] + PARTIAL), "w"), 0
            key = f"{position:09d}"
            meta = {"crop": obj.crop, "object_box": obj.object_box, "caption": obj.caption,
                    "source": dataset.describe(record)}
            _add(tar, f"{key}.{ext}", data)
            if obj.mask is not None and dataset.stage == "local":
                _add(tar, f"{key}.mask.png", _png(obj.mask))
            _add(tar, f"{key}.json", json.dumps(meta).encode())
            count += 1
            shards[-1]["samples"] = count
        if tar is not None:
            _finish(tar, out_dir, shards[-1]["name"])
            tar = None
        manifest = {"format": FORMAT, "stage": dataset.stage, "shards": shards, "left_out": bad + dataset.skipped}

        def write(partial: str) -> None:
            with open(partial, "w") as f:
                json.dump(manifest, f, indent=1)

        write_atomically(os.path.join(out_dir, MANIFEST), write)
        done = True
    finally:
        if not done:  # shards without their manifest are no data set: remove what this run wrote
            if tar is not None:
                tar.close()
            for shard in shards:
                for name in (shard["name"], shard["name"] + PARTIAL):
                    if os.path.exists(os.path.join(out_dir, name)):
                        os.remove(os.path.join(out_dir, name))
    log.info("%d samples in %d shards in %s (%d left out)", sum(s["samples"] for s in shards), len(shards), out_dir,
             manifest["left_out"])
    return manifest


class ShardDataset(ObjectDataset):
    """A shard set written by :func:`write_shards`, for the stage it was written for."""

    layout = "shard"

    def __init__(self, root: str, resolution: int = 512, stage: str = "global", latent_down: int = 8):
        super().__init__(stage, resolution, latent_down)
        with open(os.path.join(root, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{root}/{MANIFEST} is not an ELITE shard manifest (format {manifest.get('format')!r}).")
        if manifest["stage"] != stage:
            raise DataError(f"The shards in {root} were written for the {manifest['stage']} stage, not the {stage} "
                            f"stage: convert the data again with --stage {stage}.")
        self.root, self._open = root, {}
        for shard, entry in enumerate(manifest["shards"]):
            self.records.extend((shard, entry["name"], i) for i in range(entry["samples"]))
        self._finish_opening(root, "the manifest lists no samples")

    def describe(self, record) -> str:
        return f"{record[1]} sample {record[2]}"

    def _members(self, shard: int, name: str) -> tuple[tarfile.TarFile, list[list[tarfile.TarInfo]]]:
        """The open tar and its members grouped by sample, in order (opened once per process)."""
        if shard not in self._open:
            tar = tarfile.open(os.path.join(self.root, name), "r")
            groups: dict[str, list[tarfile.TarInfo]] = {}
            for member in tar.getmembers():
                groups.setdefault(member.name.split(".", 1)[0], []).append(member)
            self._open[shard] = (tar, list(groups.values()))
        return self._open[shard]

    def load(self, record) -> ObjectImage:
        shard, name, index = record
        tar, samples = self._members(shard, name)
        files = {member.name.split(".", 1)[1]: member for member in samples[index]}
        read = lambda ext: tar.extractfile(files[ext]).read()  # noqa: E731
        meta = json.loads(read("json"))
        photo = next(ext for ext in ("jpg", "png") if ext in files)
        with open_image(io.BytesIO(read(photo))) as img:
            image = img.convert("RGB")
        mask = None
        if "mask.png" in files:
            with open_image(io.BytesIO(read("mask.png"))) as m:
                mask = np.asarray(m.convert("L")) > 127
        box = lambda key: tuple(meta[key]) if meta.get(key) else None  # noqa: E731
        return ObjectImage(image, mask, box("crop"), box("object_box"), meta.get("caption"))

    def __getstate__(self):  # open tar files stay with their process
        return {**self.__dict__, "_open": {}}
