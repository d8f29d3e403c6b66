"""The subjects and prompts of a benchmark, read from a DreamBench-style folder or from ELITE's
test-input layout.

DreamBench (google/dreambooth, ``dataset/``): one folder of photos per subject, and
``prompts_and_classes.txt`` with the subjects' classes and two lists of 25 prompt templates
written ``'a {0} {1} in the jungle'.format(unique_token, class_token)``: one for objects, one for
live subjects (the dogs and cats). ELITE needs an object mask, which DreamBench does not ship: put
one per subject at ``<subject>/masks/<photo stem>.png`` (white on the object).

ELITE's test inputs (``elite_test_datasets/``): ``<n>.jpg`` with its mask ``<n>_bg.png`` (white on
the object). They have no classes; give them in ``classes.json`` ({"1": "dog", ...}) or they are
called "object". Their prompts are the templates in ``prompts.txt`` beside them, or DEFAULT_PROMPTS.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from elite_core.common.files import IMAGE_EXTENSIONS

LIVE_CLASSES = ("dog", "cat")  # DreamBench's live subjects; they get the live prompt list
# For folders without their own prompts: short re-contextualisations, in DreamBench's template form.
DEFAULT_PROMPTS = (
    "a {0} {1} on the beach",
    "a {0} {1} in the snow",
    "a {0} {1} in the jungle",
    "a {0} {1} on a wooden table",
    "a red {0} {1}",
    "a {0} {1} with a city in the background",
)
_TEMPLATE = re.compile(r"""(['"])(.*?\{0\}.*?\{1\}.*?)\1\s*\.format""")


class BenchmarkError(ValueError):
    """The benchmark folder cannot be read; the message says what is wrong and what is expected."""


@dataclass(frozen=True)
class Subject:
    name: str
    class_noun: str
    references: tuple[Path, ...]  # the real photos the generated images are compared with
    concept: Path                 # the photo the encoders see (the first reference, sorted)
    mask: Path | None             # its object mask (white = object), when there is one
    prompts: tuple[str, ...]      # templates with {0} (unique token) and {1} (class noun)
    reference_masks: tuple[Path | None, ...] = ()  # each reference's mask, when it has one (masked CLIP-I)


@dataclass(frozen=True)
class Benchmark:
    name: str
    root: Path
    subjects: tuple[Subject, ...] = field(default_factory=tuple)

    def select(self, subjects: list[str] | None = None, prompts: int | None = None) -> "Benchmark":
        """A smaller run: some subjects by name, and/or the first `prompts` prompts of each."""
        chosen = list(self.subjects)
        if subjects:
            known = {s.name: s for s in chosen}
            missing = [name for name in subjects if name not in known]
            if missing:
                raise BenchmarkError(f"Unknown subject(s) {', '.join(missing)}; the benchmark has "
                                     f"{', '.join(sorted(known))}.")
            chosen = [known[name] for name in subjects]
        if prompts is not None:
            chosen = [replace(s, prompts=s.prompts[:prompts]) for s in chosen]
        return Benchmark(self.name, self.root, tuple(chosen))


def fill_template(template: str, unique_token: str, class_noun: str) -> str:
    """A prompt from a DreamBench template; an empty token leaves no double space."""
    return " ".join(template.format(unique_token, class_noun).split())


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def parse_prompts_and_classes(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """(class of each subject, object prompts, live-subject prompts) of DreamBench's
    prompts_and_classes.txt: the ``subject_name,class`` table, then the templates of each list under
    a heading that names it ("Object Prompts", "Live Subject Prompts")."""
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    in_table, current = False, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.replace(" ", "") == "subject_name,class":
            in_table = True
            continue
        if in_table:
            if "," in stripped and ".format" not in stripped:
                name, noun = stripped.split(",", 1)
                classes[name.strip()] = noun.strip()
                continue
            if not stripped and not classes:
                continue  # blank lines before the first row
            in_table = False
        lowered = stripped.lower()
        if "prompt" in lowered and "format" not in lowered and "=" not in lowered:
            current = "live" if "live" in lowered else "object" if "object" in lowered else current
        for match in _TEMPLATE.finditer(line):
            if current is None:
                raise BenchmarkError("prompts_and_classes.txt lists prompt templates before an 'Object Prompts' "
                                     "or 'Live Subject Prompts' heading.")
            lists[current].append(match.group(2))
    return classes, lists["object"], lists["live"]


def _mask_for(subject_dir: Path, photo: Path) -> Path | None:
    for suffix in (".png", ".jpg"):
        candidate = subject_dir / "masks" / (photo.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def read_dreambench(root: str | Path) -> Benchmark:
    """A DreamBench folder: ``root/prompts_and_classes.txt`` and one photo folder per subject (the
    repository's ``dataset/`` folder)."""
    root = Path(root)
    listing = root / "prompts_and_classes.txt"
    if not listing.is_file():
        raise BenchmarkError(f"No prompts_and_classes.txt in {root}. Point at DreamBench's dataset/ folder "
                             "(github.com/google/dreambooth): it holds that file and one folder per subject.")
    classes, object_prompts, live_prompts = parse_prompts_and_classes(listing.read_text(encoding="utf-8"))
    if not classes or not object_prompts or not live_prompts:
        raise BenchmarkError(f"{listing} has no subject_name,class table or is missing one of the two prompt lists "
                             "(Object Prompts, Live Subject Prompts).")
    subjects = []
    for name, noun in classes.items():
        folder = root / name
        photos = _images(folder) if folder.is_dir() else []
        if not photos:
            raise BenchmarkError(f"Subject '{name}' has no photos: expected {folder}/ with .jpg or .png files.")
        prompts = live_prompts if noun in LIVE_CLASSES else object_prompts
        masks = tuple(_mask_for(folder, photo) for photo in photos)
        subjects.append(Subject(name, noun, tuple(photos), photos[0], masks[0], tuple(prompts), masks))
    return Benchmark("dreambench", root, tuple(subjects))


def read_elite_test_set(root: str | Path) -> Benchmark:
    """ELITE's test inputs: ``<n>.jpg`` (or .png) with ``<n>_bg.png``; ``classes.json`` and ``prompts.txt``
    are optional."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{root} is not a folder. Expected ELITE's test-input layout: <n>.jpg with <n>_bg.png.")
    classes_file, prompts_file = root / "classes.json", root / "prompts.txt"
    classes = json.loads(classes_file.read_text()) if classes_file.is_file() else {}
    if prompts_file.is_file():
        prompts = tuple(line.strip() for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip())
        bad = [p for p in prompts if "{1}" not in p]
        if bad:
            raise BenchmarkError(f"{prompts_file}: every line needs {{1}} where the subject goes (and may have {{0}} "
                                 f"for the unique token), e.g. 'a {{0}} {{1}} on the beach'; not: {bad[0]!r}")
    else:
        prompts = DEFAULT_PROMPTS
    subjects = []
    for photo in _images(root):
        if photo.stem.endswith("_bg"):
            continue
        mask = root / f"{photo.stem}_bg.png"
        if not mask.is_file():
            raise BenchmarkError(f"{photo.name} has no mask: expected {mask} (white on the object).")
        subjects.append(Subject(photo.stem, classes.get(photo.stem, "object"), (photo,), photo, mask, prompts, (mask,)))
    if not subjects:
        raise BenchmarkError(f"No <n>.jpg with <n>_bg.png in {root}.")
    return Benchmark("elite-test", root, tuple(subjects))


def read_benchmark(root: str | Path) -> Benchmark:
    """DreamBench when the folder has prompts_and_classes.txt, else ELITE's test-input layout."""
    return read_dreambench(root) if (Path(root) / "prompts_and_classes.txt").is_file() else read_elite_test_set(root)
