"""`adcli calibrate`: per-category thresholds from held-out normal images, or set by hand.

Normals come from a prepared dataset's `calib` split (the dataset's validation/good where it has one,
else the held-out part of train/good), or from a folder of fresh good images of one category
(`--normals`). Never from training images' scores, never from test labels (the self-check scores a
prepared dataset's labelled test defects only to print the real detection rate beside its own). Below
`min_normals` normals a category is not calibrated (unless `allow_few`): a threshold from three normals
promises a false-alarm rate it cannot keep. Such a category is left out with a warning and the others are
calibrated (PartlyCalibrated, exit 7, after the calibration is written); only when no category of the
call has enough is the call refused, writing nothing. `--threshold CATEGORY=VALUE` replaces a category's
threshold by hand (source "manual"), keeping the normals' statistics to show what it costs.

Writes the category router (RUN/routing-HASH.safetensors, adcli/model/routing.py) and then, atomically,
RUN/calibration.json naming it (adcli/bundle/calibration.py; the previous one kept as calibration.prev.json):
the calibration changes as one unit, however the process ends (adcli/bundle/calibration_files.py).
Categories not calibrated in this call keep their previous calibration. A calibration this model
cannot use (another model's, damaged, its router missing) is replaced, with a warning, and none of it
is kept: it is the way out that inspect's refusal names.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adcli import __version__
from adcli.bundle.calibration import FORMAT_VERSION, Calibration, CategoryCalibration, weak_self_check_lines
from adcli.bundle.calibration_files import CalibrationFiles
from adcli.data.manifest import Sample, load_manifest
from adcli.inference.detector import Detector
from adcli.core.errors import AdcliError, DataError, ImageError, PartlyCalibrated
from adcli.core.io import read_image
from adcli.model.nets.weights import WeightsNotFound
from adcli.inference.predictions import predict_samples
from adcli.core.progress import print_table, track
from adcli.model.routing import BANK_IMAGES, CategoryRouter, PatchEmbedder, build_profile
from adcli.commands.synthetic_defects import MAX_COPIES, copies_for, run_self_check, score_real_defects
from adcli.data.defects import FAMILIES, SIZES
from adcli.stats.thresholds import MIN_NORMALS, fit_threshold, normals_needed, score_summary

PIXEL_QUANTILE = 0.999  # of all calibration-normal pixels: the contour level on heatmaps
MAX_REAL_DEFECTS = MAX_COPIES  # labelled test defects the self-check scores per category, at most
PROFILE_MIN_NORMALS = 2  # a category left out still gets a routing profile from this many held-out normals


@dataclasses.dataclass
class NormalSet:
    """One category's calibration normals and the good images its router bank is built from."""

    source: str  # prepared | normals
    source_path: str
    normals: list[Sample]
    bank: list[str]  # image paths; may overlap nothing in `normals`
    # the prepared dataset's labelled test defects of the category: scored by the self-check to print the
    # real detection rate beside the synthetic one; never used to choose the threshold
    defects: list[Sample] = dataclasses.field(default_factory=list)


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """["bottle=0.42", ...] -> {"bottle": 0.42}."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or not np.isfinite(out.get(name.strip(), np.nan)):
            raise AdcliError(f"--threshold {item!r}: expected CATEGORY=NUMBER, e.g. --threshold bottle=0.42")
    return out


def normals_from_prepared(prepared: str | Path, categories: list[str]) -> dict[str, NormalSet]:
    """The calib split of each category that has one (categories without are left out of the dict)."""
    manifest = load_manifest(prepared)
    where = str(Path(prepared).resolve())
    sets = {}
    for cat in categories:
        calib = [s for s in manifest if s.split == "calib" and s.category == cat]
        train = [s.path for s in manifest if s.split == "train" and s.category == cat]
        defects = [s for s in manifest if s.split == "test" and s.category == cat and s.label == 1]
        defects = defects[::-(-len(defects) // MAX_REAL_DEFECTS)] if defects else []  # spread over the defect types
        if calib:
            sets[cat] = NormalSet("prepared", where, calib, train or [s.path for s in calib], defects)
    return sets


def normals_from_folder(folder: str | Path, category: str, console: Console) -> NormalSet:
    from adcli.commands.inspect.intake import display_path, list_files

    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"--normals {folder} is a file; give the folder that holds the good images")
    if not folder.is_dir():
        raise DataError(f"--normals folder not found: {folder}")
    samples = []
    for path in list_files(folder):
        try:
            w, h = read_image(path).size
        except ImageError as exc:
            console.print(f"[yellow]warning:[/] skipped: {exc}", highlight=False)
            continue
        samples.append(Sample(str(path.resolve()), category, "calib", 0, "good", None, w, h))
    if not samples:
        raise DataError(f"no readable images in --normals {display_path(folder)}")
    # The router needs a bank and held-out images of its own: every other image goes to the bank.
    return NormalSet("normals", str(folder.resolve()), samples, [s.path for s in samples[::2]])


def shortfall(cat: str, normal_set: NormalSet | None, target_fpr: float, min_normals: int, allow_few: bool) -> str | None:
    """Why `cat` cannot be calibrated from these normals, as one line naming the fixes; None if it can."""
    n = len(normal_set.normals) if normal_set else 0
    fixes = f"add good images (--normals FOLDER --category {cat})"
    if normal_set is None or normal_set.source == "prepared":
        fixes += " or hold out more of its train/good with `adcli prepare --calib-fraction`"
    if n == 0:
        return f"{cat}: no calibration normals; {fixes}"
    if n < 2:
        return f"{cat}: {n} calibration normal; at least 2 are needed even with --allow-few; {fixes}"
    if n < min_normals and not allow_few:
        return (f"{cat}: only {n} calibration normals; at least {min_normals} are needed ({min_normals - n} more), and "
                f"{normals_needed(target_fpr)} to confirm a {target_fpr:.1%} false-alarm rate at 95% confidence. "
                f"{fixes[0].upper()}{fixes[1:]}, or accept a weaker threshold with --allow-few")
    return None


def _refuse_all(short: dict[str, str], min_normals: int) -> None:
    """No category of the call has enough normals: one line, nothing written."""
    if len(short) == 1:
        raise DataError(next(iter(short.values())))
    raise DataError(f"no category could be calibrated, each has fewer than {min_normals} calibration normals "
                    f"({', '.join(short)}): add good images (--normals FOLDER --category NAME), hold out more with "
                    "`adcli prepare --calib-fraction`, or accept weaker thresholds with --allow-few")


def _left_out(short: dict[str, str], previous: dict[str, CategoryCalibration], console: Console) -> None:
    for cat, why in short.items():
        prev = previous.get(cat)
        keeps = (f"it keeps its previous calibration (threshold {prev.threshold:.5g} from {prev.n_normals} normals)"
                 if prev else "it stays uncalibrated: inspect refuses it")
        console.print(f"[yellow]warning:[/] left out {escape(why)}; {keeps}", highlight=False)


def _category_calibration(normal_set: NormalSet, scores: np.ndarray, maps: np.ndarray, target_fpr: float,
                          console: Console, cat: str) -> CategoryCalibration:
    th = fit_threshold(scores, target_fpr)
    if th.too_few:
        console.print(f"[yellow]note:[/] {cat}: {th.n_normals} normals cannot confirm a {target_fpr:.1%} false-alarm rate; "
                      f"{th.normals_needed} would (95% confidence). The threshold comes from a fitted distribution; "
                      "'FPR upper 95%' is what the normals support.", highlight=False)
    return CategoryCalibration(
        threshold=th.threshold, target_fpr=target_fpr, expected_fpr=th.expected_fpr, fpr_upper_95=th.fpr_upper_95,
        n_normals=th.n_normals, n_above=th.n_above, normals_needed=th.normals_needed,
        pixel_threshold=float(np.quantile(maps, PIXEL_QUANTILE)), pixel_median=float(np.median(maps)),
        scores=score_summary(scores, th.transform), normal_scores=[float(s) for s in scores],
        source=normal_set.source, source_path=normal_set.source_path)


def _router(detector: Detector, sets: dict[str, NormalSet], console: Console) -> CategoryRouter | None:
    """The previous router with the profiles of `sets`' categories replaced; None (and a note) when no
    pretrained weights can be found for a new one."""
    previous = detector.router
    try:
        embedder = previous.embedder if previous is not None else PatchEmbedder()
    except WeightsNotFound as exc:
        console.print(f"[yellow]warning:[/] --category auto will not be available: {exc}", highlight=False)
        return None
    profiles = dict(previous.profiles) if previous is not None else {}
    rng = np.random.default_rng(0)
    for cat, normal_set in sets.items():
        chosen = sorted(rng.choice(len(normal_set.bank), min(BANK_IMAGES, len(normal_set.bank)), replace=False))
        bank_paths = {normal_set.bank[i] for i in chosen}
        held_out = [s.path for s in normal_set.normals if s.path not in bank_paths] or [s.path for s in normal_set.normals]
        profiles[cat] = build_profile(embedder, [read_image(p) for p in sorted(bank_paths)],
                                      [read_image(p) for p in held_out])
    profiles = {c: profiles[c] for c in detector.categories if c in profiles}
    return CategoryRouter(embedder, profiles)


def _self_checks(detector: Detector, sets: dict[str, NormalSet], per_category: dict[str, CategoryCalibration],
                 console: Console) -> None:
    """Each calibrated category's self-check, stored in its calibration; one line of what it cost."""
    start = time.perf_counter()
    copies = sum(copies_for(len(normal_set.normals)) for normal_set in sets.values())
    real = sum(len(normal_set.defects) for normal_set in sets.values())
    real_seconds = 0.0
    with track(console, "self-check", copies + real) as task:
        for cat, normal_set in sets.items():
            cal = per_category[cat]
            checked = run_self_check(detector, cat, normal_set.normals, np.asarray(cal.normal_scores), cal.threshold,
                                     progress=task.advance)
            if normal_set.defects:
                real_start = time.perf_counter()
                scores = score_real_defects(detector, cat, normal_set.defects, task.advance)
                took = time.perf_counter() - real_start
                checked = checked.with_real_defects(scores, cal.threshold, took)
                real_seconds += took
            per_category[cat] = dataclasses.replace(cal, self_check=checked)
    # the synthetic part is the one bounded by the calibration's own cost; the labelled defects are extra
    synthetic_seconds = time.perf_counter() - start - real_seconds
    labelled = f" and {real} labelled test defects, {real_seconds:.1f} s" if real else ""
    console.print(f"self-check: {copies} synthetic images, {synthetic_seconds:.1f} s{labelled}", highlight=False)


def calibrate(run: str | Path, prepared: str | Path | None = None, target_fpr: float = 0.01, device: str = "auto",
              console: Console | None = None, batch_size: int | None = None, normals: str | Path | None = None,
              category: str | None = None, thresholds: dict[str, float] | None = None,
              min_normals: int = MIN_NORMALS, allow_few: bool = False, self_check: bool = True) -> Calibration:
    """self_check: score synthetic defective copies of each category's normals (adcli/commands/synthetic_defects.py)
    and store how well the model finds them; a weak model is named in a warning."""
    console = console or Console(stderr=True)
    thresholds = thresholds or {}
    if not 0 < target_fpr < 1:
        raise AdcliError(f"--target-fpr must be between 0 and 1, got {target_fpr}")
    if prepared is not None and normals is not None:
        raise AdcliError("give either --data (a prepared dataset) or --normals (a folder of good images), not both")
    if prepared is None and normals is None and not thresholds:
        raise AdcliError("nothing to calibrate from: give --data PREPARED (its calib split), --normals FOLDER "
                         "[--category NAME], or --threshold CATEGORY=VALUE")
    detector = Detector.load(run, device, batch_size, bad_calibration="drop")
    if detector.test_profile_warning:
        console.print(f"[yellow]warning:[/] {escape(detector.test_profile_warning)}", highlight=False)
    if detector.dropped_calibration:
        # The reason ends in "run `adcli calibrate` again": that is what this call does.
        reason = detector.dropped_calibration.split("; run `adcli calibrate")[0]
        console.print(f"[yellow]warning:[/] replacing the calibration: {escape(reason)}", highlight=False)
    categories = detector.categories
    for cat in thresholds:
        detector.check_category(cat)
    if normals is not None:
        if category is None and len(categories) > 1:
            raise AdcliError(f"--normals holds one category's images: add --category ({', '.join(categories)})")
        wanted = [detector.check_category(category or categories[0])]
        found = {wanted[0]: normals_from_folder(normals, wanted[0], console)}
    elif prepared is not None:
        wanted = [detector.check_category(category)] if category else categories
        found = normals_from_prepared(prepared, wanted)
    else:
        wanted, found = [], {}
    short = {c: why for c in wanted if (why := shortfall(c, found.get(c), target_fpr, min_normals, allow_few))}
    if wanted and len(short) == len(wanted):
        _refuse_all(short, min_normals)
    sets = {c: found[c] for c in wanted if c not in short}

    per_category = dict(detector.calibration.categories) if detector.calibration else {}
    _left_out(short, per_category, console)
    if sets:
        samples = [s for normal_set in sets.values() for s in normal_set.normals]
        with track(console, "calibrate", len(samples)) as task:
            outputs = predict_samples(detector, samples, detector.calibration_files.calibration_cache, task.advance)
        for cat, normal_set in sets.items():
            idx = [i for i, s in enumerate(samples) if s.category == cat]
            per_category[cat] = _category_calibration(normal_set, outputs.scores[idx], outputs.maps[idx], target_fpr,
                                                       console, cat)
        if self_check:
            _self_checks(detector, sets, per_category, console)
    for cat, value in thresholds.items():
        if cat not in per_category:
            raise AdcliError(f"--threshold {cat}=...: {cat} has no calibration normals yet, so heatmaps would have no colour "
                             f"scale; calibrate it from normals in the same call (--data or --normals)")
        per_category[cat] = per_category[cat].with_manual_threshold(value)

    routing = detector.calibration.routing if detector.calibration else ""
    if sets:
        # A category left out still gets a profile (unless it keeps one), so that --category auto sends its
        # images to it (verdict `uncalibrated`) rather than to the nearest calibrated product, where they could pass.
        known = detector.router.profiles if detector.router is not None else {}
        profiled = {c: found[c] for c in short if c in found and c not in known
                    and len(found[c].normals) >= PROFILE_MIN_NORMALS}
        router = _router(detector, {**sets, **profiled}, console)
        routing = ""
        if router is not None:
            routing = detector.calibration_files.write_router(router)
    calibration = Calibration(format_version=FORMAT_VERSION, adcli_version=__version__, model_id=detector.model_id,
                              created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), target_fpr=target_fpr, routing=routing,
                              categories={c: per_category[c] for c in categories if c in per_category})
    detector.calibration_files.write_calibration(calibration)
    print_calibration(calibration, console)
    for line in weak_self_check_lines(calibration, str(run)):
        console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    for cat, c in calibration.categories.items():
        if c.self_check is not None and c.self_check.misses_real_defects:
            found, defects = c.self_check.real_found
            console.print(f"[yellow]warning:[/] at its threshold model {escape(str(run))} finds only {found}/{defects} "
                          f"({found / defects:.0%}) of {escape(cat)}'s labelled test defects", highlight=False)
    uncalibrated = [c for c in categories if c not in calibration.categories]
    if uncalibrated:
        console.print(f"[yellow]note:[/] not calibrated yet: {', '.join(uncalibrated)} (inspect refuses them)", highlight=False)
    console.print(f"calibration written to {detector.calibration_files.path / CalibrationFiles.CALIBRATION}")
    if short:
        raise PartlyCalibrated(calibration, list(short), list(sets))
    return calibration


def print_calibration(calibration: Calibration, console: Console) -> None:
    table = Table(title="calibration")
    for col in ("category", "source", "normals", "threshold", "target FPR", "expected FPR", "FPR upper 95%",
                "pixel threshold", "self-check AUROC", "synthetic found (small, large)", "labelled test defects found"):
        table.add_column(col, justify="left" if col in ("category", "source") else "right")
    for cat, c in calibration.categories.items():
        table.add_row(cat, c.source, str(c.n_normals), f"{c.threshold:.5g}", f"{c.target_fpr:.1%}", f"{c.expected_fpr:.2%}",
                      f"{c.fpr_upper_95:.1%}", f"{c.pixel_threshold:.4g}", *_self_check_cells(c))
    print_table(console, table)
    checked = {cat: c.self_check for cat, c in calibration.categories.items() if c.self_check is not None}
    if checked:
        print_table(console, _families_table(checked))


def _self_check_cells(c: CategoryCalibration) -> tuple[str, str, str]:
    if c.self_check is None:
        return "–", "not run", "–"
    counts = ["{}/{}".format(*c.self_check.count(size)) for size in SIZES]
    mark = " [red]weak[/]" if c.self_check.weak else ""
    real = c.self_check.real_found
    real_cell = f"{real[0]}/{real[1]} ({real[0] / real[1]:.0%})" if real else "–"
    return f"{c.self_check.auroc:.3f}{mark}", ", ".join(counts), real_cell


def _families_table(checked: dict) -> Table:
    """Per category and defect family: synthetic copies found at the threshold, small and large."""
    table = Table(title="self-check: synthetic defects found at the threshold (small · large; size = share of the "
                        f"image side: {', '.join(f'{k} {v:.0%}' for k, v in SIZES.items())})")
    table.add_column("category")
    for family in FAMILIES:
        table.add_column(family, justify="right")
    for cat, sc in checked.items():
        cells = [" · ".join("{}/{}".format(*sc.found.get(family, {}).get(size, [0, 0])) for size in SIZES)
                 for family in FAMILIES]
        table.add_row(cat, *cells)
    return table
