"""Dataset folders -> a manifest of samples (JSON lines) plus a per-category summary.

Layouts: `mvtec` (ROOT/<category>/{train/good, test/<type>, ground_truth/<type>/<stem>_mask.png},
or ROOT itself one category), `visa` (ROOT/split_csv/1cls.csv with object,split,label,image,mask),
`folder` (ROOT/<category>/*.png good images only). The `calib` split, which training never sees, is
the dataset's own held-out normals where it has them (MVTec 3D-AD and MVTec LOCO ship
`validation/good`), else a fraction of each category's train/good images.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
from pathlib import Path
from typing import Callable, Iterable

from adcli.core.errors import DataError, ImageError
from adcli.core.io import atomic_write_text, read_image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "calib", "test")
MANIFEST_NAME = "manifest.jsonl"
SUMMARY_NAME = "summary.csv"
PROBLEMS_NAME = "problems.txt"


@dataclasses.dataclass(frozen=True)
class Sample:
    path: str  # absolute image path
    category: str
    split: str  # train | calib | test
    label: int  # 0 good, 1 defective
    defect: str  # "good" or the defect type folder name
    mask: str | None = None  # absolute mask path for defective test images
    width: int = 0
    height: int = 0


@dataclasses.dataclass
class PrepareResult:
    samples: list[Sample]
    problems: list[str]
    held_out_by_dataset: frozenset[str] = frozenset()  # categories whose calib split is the dataset's validation/good

    def summary_rows(self) -> list[dict]:
        rows: dict[str, dict] = {}
        for s in self.samples:
            row = rows.setdefault(s.category, {"category": s.category, "train": 0, "calib": 0, "test_good": 0, "test_defect": 0})
            if s.split == "test":
                row["test_defect" if s.label else "test_good"] += 1
            else:
                row[s.split] += 1
        return [rows[c] for c in sorted(rows)]

    def calibration_warnings(self, min_normals: int) -> list[str]:
        """One line per category whose calib split is too small for `adcli calibrate` (which leaves it
        out), naming what would be enough: a --calib-fraction, or good images of its own."""
        lines = []
        for row in self.summary_rows():
            cat, n = row["category"], row["calib"]
            if n >= min_normals or not row["train"]:  # no train/good: already a problem line
                continue
            n_good = row["train"] + n
            if cat in self.held_out_by_dataset:
                fix = "add good images to its validation/good, or "
            elif (fraction := calib_fraction_for(n_good, min_normals)) is not None:
                held = _n_calib(n_good, fraction)
                fix = (f"prepare with --calib-fraction {fraction:g} (holds out {held} of its {n_good} train/good images, "
                       f"{n_good - held} left to train), or ")
            else:
                fix = f"its {n_good} train/good images are too few to hold out {min_normals} and still train: "
            lines.append(f"{cat}: {n} calibration normals, `adcli calibrate` needs {min_normals} and leaves it uncalibrated: "
                         f"{fix}calibrate it with `adcli calibrate RUN --normals FOLDER --category {cat}`")
        return lines


def _n_calib(n_good: int, fraction: float) -> int:
    """How many of a category's n_good train/good images `_split_calibration` holds out at `fraction`."""
    n = int(round(fraction * n_good))
    if fraction > 0 and n == 0 and n_good >= 2:
        n = 1
    return min(n, n_good - 1)


def calib_fraction_for(n_good: int, needed: int) -> float | None:
    """The smallest --calib-fraction (two decimals) that holds out `needed` of n_good train/good images
    (None when even 0.99 cannot: the category needs good images of its own)."""
    for hundredths in range(max(1, math.floor(100 * (needed - 1) / max(n_good, 1))), 100):
        if _n_calib(n_good, hundredths / 100) >= needed:
            return hundredths / 100
    return None


def _image_files(folder: Path, problems: list[str]) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(p)
        else:
            problems.append(f"skipped non-image file: {p}")
    return files


def _mvtec_category_dirs(root: Path) -> list[Path]:
    if (root / "train").is_dir():
        return [root]
    return [d for d in sorted(root.iterdir()) if d.is_dir() and (d / "train").is_dir()]


def _subfolders(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _first(problems: list[str], n: int = 3) -> str:
    more = f" (and {len(problems) - n} more)" if len(problems) > n else ""
    return "; ".join(problems[:n]) + more


def scan_mvtec(root: Path, problems: list[str]) -> list[Sample]:
    samples = []
    category_dirs = _mvtec_category_dirs(root)
    if not category_dirs:
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for d in (root, *_subfolders(root)) for p in d.iterdir()
                         if p.is_file())
        hint = ("; it holds images directly or in sub-folders: for good images sorted into one folder per "
                "category use --format folder") if has_images else ""
        raise DataError(f"no MVTec-style category (a folder with train/good) under {root}{hint}")
    for cat_dir in category_dirs:
        cat = cat_dir.name
        good_dir = cat_dir / "train" / "good"
        good = _image_files(good_dir, problems) if good_dir.is_dir() else []
        if not good:
            problems.append(f"category '{cat}' has no readable train/good images and cannot be trained")
        samples += [Sample(str(p.resolve()), cat, "train", 0, "good") for p in good]
        validation_dir = cat_dir / "validation" / "good"
        if validation_dir.is_dir():
            samples += [Sample(str(p.resolve()), cat, "calib", 0, "good") for p in _image_files(validation_dir, problems)]
        test_dir = cat_dir / "test"
        if not test_dir.is_dir():
            continue
        for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
            for p in _image_files(type_dir, problems):
                if type_dir.name == "good":
                    samples.append(Sample(str(p.resolve()), cat, "test", 0, "good"))
                    continue
                mask = cat_dir / "ground_truth" / type_dir.name / f"{p.stem}_mask.png"
                if not mask.is_file():
                    problems.append(f"mask missing for {p} (expected {mask})")
                samples.append(Sample(str(p.resolve()), cat, "test", 1, type_dir.name, str(mask.resolve()) if mask.is_file() else None))
    return samples


def scan_visa(root: Path, problems: list[str]) -> list[Sample]:
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DataError(f"VisA layout needs {csv_path}")
    samples = []
    with csv_path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                cat, split, label, image = row["object"], row["split"], row["label"], row["image"]
            except KeyError as exc:
                raise DataError(f"{csv_path}: missing column {exc}") from None
            if split not in ("train", "test") or label not in ("normal", "anomaly"):
                problems.append(f"{csv_path} line {i}: unexpected split/label '{split}'/'{label}'")
                continue
            is_bad = label == "anomaly"
            mask = (row.get("mask") or "").strip()
            mask_path = (root / mask).resolve() if mask else None
            if is_bad and (mask_path is None or not mask_path.is_file()):
                problems.append(f"mask missing for {root / image}")
                mask_path = None
            samples.append(Sample(str((root / image).resolve()), cat, split, int(is_bad), "anomaly" if is_bad else "good",
                                  str(mask_path) if (is_bad and mask_path) else None))
    return samples


def scan_folder(root: Path, problems: list[str]) -> list[Sample]:
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir() if p.is_file()):
        cat_dirs = [root]
    else:
        cat_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return [Sample(str(p.resolve()), d.name, "train", 0, "good") for d in cat_dirs for p in _image_files(d, problems)]


SCANNERS: dict[str, Callable[[Path, list[str]], list[Sample]]] = {"mvtec": scan_mvtec, "visa": scan_visa, "folder": scan_folder}


def _verify(samples: Iterable[Sample], problems: list[str], progress: Callable[[], None] | None) -> list[Sample]:
    """Decode every image (and mask) once; drop unreadable images, drop bad masks with a problem line."""
    kept = []
    for s in samples:
        if progress:
            progress()
        try:
            w, h = read_image(s.path).size
        except ImageError as exc:
            problems.append(f"unreadable image skipped: {exc}")
            continue
        mask = s.mask
        if mask is not None:
            try:
                mw, mh = read_image(mask, mode="L").size
                if (mw, mh) != (w, h):
                    problems.append(f"mask size {mw}x{mh} differs from image size {w}x{h}: {mask}")
                    mask = None
            except ImageError as exc:
                problems.append(f"unreadable mask: {exc}")
                mask = None
        kept.append(dataclasses.replace(s, mask=mask, width=w, height=h))
    return kept


def _split_calibration(samples: list[Sample], fraction: float, seed: int) -> list[Sample]:
    """Move `fraction` of each category's train images to `calib`, chosen by a seeded shuffle, unless the
    dataset already holds normals out for it (validation/good)."""
    out = [s for s in samples if s.split != "train"]
    has_calib = {s.category for s in samples if s.split == "calib"}
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        if s.split == "train" and s.category in has_calib:
            out.append(s)
        elif s.split == "train":
            by_cat.setdefault(s.category, []).append(s)
    for cat, items in sorted(by_cat.items()):
        order = sorted(items, key=lambda s: s.path)
        random.Random(f"{seed}:{cat}").shuffle(order)
        n_calib = _n_calib(len(order), fraction)
        out += [dataclasses.replace(s, split="calib") for s in order[:n_calib]]
        out += order[n_calib:]
    return sorted(out, key=lambda s: (s.category, SPLITS.index(s.split), s.path))


def _inside(root: Path, samples: list[Sample], problems: list[str]) -> list[Sample]:
    """Drop samples whose image (or mask) resolves outside `root`: a link that leads into another
    category or dataset would silently train on the wrong images."""
    kept = []
    for s in samples:
        outside = [p for p in (s.path, s.mask) if p is not None and not Path(p).is_relative_to(root)]
        if outside:
            problems.append(f"skipped a link out of the dataset folder: {outside[0]} (use --follow-links to allow)")
            continue
        kept.append(s)
    return kept


def prepare(root: str | Path, fmt: str = "mvtec", calib_fraction: float = 0.1, seed: int = 0,
            strict: bool = False, progress: Callable[[], None] | None = None, follow_links: bool = False) -> PrepareResult:
    """Scan a dataset into samples. Image paths are stored resolved; without `follow_links`, files whose
    real location is outside `root` (symlinks out of it) are skipped with a problem line."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    if fmt not in SCANNERS:
        raise DataError(f"unknown format '{fmt}' (choose {', '.join(SCANNERS)})")
    if not 0.0 <= calib_fraction < 1.0:
        raise DataError(f"--calib-fraction must be in [0, 1), got {calib_fraction}")
    problems: list[str] = []
    found = SCANNERS[fmt](root, problems)
    if not follow_links:
        found = _inside(root.resolve(), found, problems)
    samples = _verify(found, problems, progress)
    cats_found = {s.category for s in found}
    cats_train = {s.category for s in samples if s.split == "train"}
    for cat in sorted(cats_found - cats_train):
        problems.append(f"category '{cat}' has no readable train/good images and cannot be trained")
    if strict and problems:
        raise DataError(f"{len(problems)} problem(s) in {root} with --strict (without it they are listed in "
                        f"problems.txt and skipped): {_first(problems)}")
    if not cats_train:
        reasons = f": {_first(problems)}" if problems else ""
        raise DataError(f"no readable training images found under {root} (format {fmt}){reasons}")
    held_out = frozenset(s.category for s in samples if s.split == "calib")
    return PrepareResult(_split_calibration(samples, calib_fraction, seed), problems, held_out)


def write_prepared(result: PrepareResult, out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / MANIFEST_NAME, "".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in result.samples))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["category", "train", "calib", "test_good", "test_defect"])
    writer.writeheader()
    writer.writerows(result.summary_rows())
    atomic_write_text(out / SUMMARY_NAME, buf.getvalue())
    atomic_write_text(out / PROBLEMS_NAME, "".join(p + "\n" for p in result.problems))


def load_manifest(prepared: str | Path) -> list[Sample]:
    path = Path(prepared) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"no {MANIFEST_NAME} in {prepared}: run `adcli prepare` first")
    samples = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(Sample(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{path} line {i}: not a manifest row ({exc})") from None
    if not samples:
        raise DataError(f"{path} is empty")
    return samples
