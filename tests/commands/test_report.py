import csv
import json

import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from adcli.data.manifest import load_manifest
from adcli.model.recipe import load_recipe
from adcli.commands.report import make_report
from adcli.commands.train import train


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("rep") / "run", load_recipe("diffusionad", "test"), device="cpu")


def test_report_files_and_numbers(run, prepared, tmp_path):
    rows = make_report(run, prepared, tmp_path / "r", device="cpu")
    assert [r["category"] for r in rows] == ["disc", "weave", "mean"]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["split"] == "test" and len(metrics["categories"]) == 3
    with open(tmp_path / "r" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert {"image_auroc", "pixel_ap", "aupro", "ms_per_image", "device"} <= set(table[0])
    # the image AUROC agrees with scikit-learn on the cached scores
    from adcli.core.io import load_tensors

    scores = load_tensors(tmp_path / "r" / "outputs.safetensors")["scores"].numpy()
    test = [s for s in load_manifest(prepared) if s.split == "test"]
    disc = [i for i, s in enumerate(test) if s.category == "disc"]
    expected = roc_auc_score([test[i].label for i in disc], scores[disc])
    assert rows[0]["image_auroc"] == pytest.approx(expected, abs=1e-9)
    assert rows[2]["image_auroc"] == pytest.approx((rows[0]["image_auroc"] + rows[1]["image_auroc"]) / 2)
    # per defect type: every defect folder of the test split, its count, its AUROC against the goods
    with open(tmp_path / "r" / "defect_types.csv") as f:
        types = list(csv.DictReader(f))
    expected_types = sorted({(s.category, s.defect) for s in test if s.label == 1})
    assert [(t["category"], t["defect_type"]) for t in types] == expected_types
    first = [i for i in disc if test[i].label == 0 or test[i].defect == types[0]["defect_type"]]
    assert float(types[0]["image_auroc"]) == pytest.approx(roc_auc_score([test[i].label for i in first], scores[first]))
    assert int(types[0]["images"]) == sum(test[i].defect == types[0]["defect_type"] for i in disc)
    assert len(metrics["defect_types"]) == len(types) > 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 * 2 + 3 * 3  # ROC + histogram per category, gallery
    assert "http://" not in page and "https://" not in page  # opens offline
    assert "likeliest misses" in page


def test_a_split_without_defects_has_no_empty_gallery_headings(run, prepared, tmp_path):
    make_report(run, prepared, tmp_path / "r", split="calib", device="cpu")
    page = (tmp_path / "r" / "report.html").read_text()
    assert "likeliest false alarms" in page and "likeliest misses" not in page


def test_report_reuses_cached_outputs(run, prepared, tmp_path, monkeypatch):
    make_report(run, prepared, tmp_path / "r", device="cpu")
    from adcli.model.methods.diffusionad import DiffusionAD

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although outputs were cached")

    monkeypatch.setattr(DiffusionAD, "predict", fail)
    rows = make_report(run, prepared, tmp_path / "r", device="cpu")
    assert rows[-1]["device"].endswith("(cached)")


def test_train_never_opens_test_images_or_masks(prepared, tmp_path, monkeypatch):
    opened = []
    original = Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    train(prepared, tmp_path / "run", load_recipe("diffusionad", "test"), device="cpu")
    samples = load_manifest(prepared)
    forbidden = {s.path for s in samples if s.split != "train"} | {s.mask for s in samples if s.mask}
    assert opened and not forbidden & set(opened)
    assert all("/test/" not in p and "ground_truth" not in p for p in opened)


def test_unknown_split(run, prepared, tmp_path):
    from adcli.core.errors import DataError

    with pytest.raises(DataError, match="unknown split"):
        make_report(run, prepared, tmp_path, split="val")


def test_calibrated_report_shows_threshold_rates(run, prepared, tmp_path):
    import shutil

    from adcli.commands.calibrate import calibrate

    calibrated = tmp_path / "run"
    shutil.copytree(run, calibrated)
    cal = calibrate(calibrated, prepared, 0.05, device="cpu")
    rows = make_report(calibrated, prepared, tmp_path / "r", device="cpu")
    disc = rows[0]
    assert disc["threshold"] == cal.categories["disc"].threshold
    assert 0 <= disc["observed_fpr"] <= 1 and 0 <= disc["detection_rate"] <= 1
    assert rows[-1]["threshold"] is None
    page = (tmp_path / "r" / "report.html").read_text()
    assert "At the calibrated thresholds" in page
    # the self-check beside the real detection rate
    check = cal.categories["disc"].self_check
    found, copies = check.count("large")
    assert disc["self_check_auroc"] == check.auroc and disc["synthetic_large_found"] == found / copies
    assert disc["self_check_weak"] == check.weak and "self-check AUROC" in page
    with open(tmp_path / "r" / "metrics.csv") as f:
        assert float(next(csv.DictReader(f))["self_check_auroc"]) == pytest.approx(check.auroc)


def test_a_defect_without_mask_is_left_out_of_the_pixel_metrics(run, prepared, tmp_path):
    import dataclasses

    from adcli.data.manifest import MANIFEST_NAME

    samples = load_manifest(prepared)
    dropped = next(s for s in samples if s.category == "disc" and s.label == 1)

    def write(folder, rows):
        folder.mkdir()
        (folder / MANIFEST_NAME).write_text("".join(json.dumps(dataclasses.asdict(s)) + "\n" for s in rows))
        return folder

    no_mask = write(tmp_path / "no_mask", [dataclasses.replace(s, mask=None) if s == dropped else s for s in samples])
    without = write(tmp_path / "without", [s for s in samples if s != dropped])
    row = make_report(run, no_mask, tmp_path / "a", device="cpu")[0]
    reference = make_report(run, without, tmp_path / "b", device="cpu")[0]
    assert row["defects_without_mask"] == 1 and row["images"] == reference["images"] + 1
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert row[key] == pytest.approx(reference[key])  # not counted as an all-normal mask


def test_metrics_without_type_example_matches_the_report_and_leaves_the_type_out(run, prepared, tmp_path):
    import importlib.util
    import math
    import subprocess
    import sys
    from pathlib import Path

    from adcli.core.io import load_tensors
    from adcli.stats.metrics import METRIC_NAMES

    script = Path(__file__).resolve().parents[2] / "examples" / "metrics_without_type.py"
    spec = importlib.util.spec_from_file_location("metrics_without_type", script)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    reported = make_report(run, prepared, tmp_path / "r", device="cpu")
    rows = example.metrics_without(prepared, tmp_path / "r", {"spot"})
    assert [(r["category"], r["left_out"]) for r in rows] == [("disc", "-"), ("disc", "spot"), ("weave", "-"), ("weave", "spot")]
    for full, r in zip(reported[:2], rows[::2]):  # nothing left out: the report's own numbers
        assert all(math.isclose(full[k], r[k]) or (math.isnan(full[k]) and math.isnan(r[k])) for k in METRIC_NAMES)
    test = [s for s in load_manifest(prepared) if s.split == "test"]
    scores = load_tensors(tmp_path / "r" / "outputs.safetensors")["scores"].numpy()
    kept = [i for i, s in enumerate(test) if s.category == "disc" and s.defect != "spot"]
    assert rows[1]["images"] == len(kept) < rows[0]["images"]
    assert rows[1]["image_auroc"] == pytest.approx(roc_auc_score([test[i].label for i in kept], scores[kept]))
    done = subprocess.run([sys.executable, str(script), str(prepared), str(tmp_path / "r"), "spot", "--category", "weave"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split()[:2] for line in done.stdout.splitlines()[1:]] == [["weave", "-"], ["weave", "spot"]]
    for args, says in (([str(tmp_path / "r"), "spopt"], "no 'test' images of defect type spopt"),
                       ([str(tmp_path), "spot"], "is not an `adcli report` folder")):
        done = subprocess.run([sys.executable, str(script), str(prepared), *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith("error:") and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def test_review_shows_thumbnails_of_rows_without_a_heatmap_where_the_file_decodes(tmp_path):
    """adcli review (adcli/commands/report/review.py): an ERROR row whose file decodes now and an
    UNKNOWN_CATEGORY row without a heatmap get a small picture of the file; an undecodable file, a missing
    one and a pipe (which would block a read) get their text only; the normalised score is shown."""
    import os

    import numpy as np

    from adcli.commands.inspect.folder import _error_row
    from adcli.commands.report.review import THUMBNAIL_PX, render_review
    from tests.conftest import save_png

    images, out = tmp_path / "in", tmp_path / "out"
    decodable = save_png(images / "was_locked.png", np.random.default_rng(0).integers(0, 255, (600, 400, 3), np.uint8))
    unknown = save_png(images / "odd_part.png", np.full((64, 64, 3), 200, np.uint8))
    (images / "broken.png").write_bytes(b"not a png")
    os.mkfifo(images / "pipe.png")
    rows = [_error_row(str(decodable), "m", f"cannot read {decodable}: Permission denied"),
            _error_row(str(images / "broken.png"), "m", "corrupt or truncated image"),
            _error_row(str(images / "pipe.png"), "m", "not an image file (a named pipe)"),
            _error_row(str(images / "gone.png"), "m", "cannot read: No such file or directory"),
            {**_error_row(str(unknown), "m"), "verdict": "UNKNOWN_CATEGORY", "category": "disc", "score": "1.2",
             "threshold": "2.48", "score_normalised": "0.0913", "error": ""}]
    out.mkdir()
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = render_review(out).read_text()
    thumbs = page.split("<img class='thumb' src='data:image/jpeg;base64,")[1:]
    assert len(thumbs) == 2  # was_locked.png and odd_part.png
    import base64
    import io

    for thumb in thumbs:
        data = base64.b64decode(thumb.split("'", 1)[0])
        assert len(data) < 20_000 and max(Image.open(io.BytesIO(data)).size) <= THUMBNAIL_PX
    cases = page.split("<div class='case'>")[1:]
    by_name = {name: next(c for c in cases if name in c) for name in ("was_locked", "odd_part", "broken", "pipe", "gone")}
    assert "thumb" in by_name["was_locked"] and "thumb" in by_name["odd_part"]
    assert all("<img" not in by_name[n] for n in ("broken", "pipe", "gone"))
    assert "Permission denied" in by_name["was_locked"] and "corrupt" in by_name["broken"]
    assert "score <b>0.0913</b> (0.5 = threshold; raw 1.2, threshold 2.48)" in by_name["odd_part"]
