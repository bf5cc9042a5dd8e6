"""The one inference path (adcli/inference/detector.py) and the public Python API."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

import adcli
from adcli.commands.calibrate import calibrate
from adcli.inference.detector import Detector, ToScore
from adcli.core.errors import AdcliError, BundleError
from adcli.commands.train import train
from tests.conftest import recipe_with_weights, save_png

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def knn_run(prepared, mobilenet_weights, tmp_path_factory):
    run = train(prepared, tmp_path_factory.mktemp("det") / "run", recipe_with_weights("knn", mobilenet_weights), device="cpu")
    calibrate(run, prepared, 0.2, device="cpu")
    return run


def _test_images(demo_root):
    return sorted((demo_root / "disc" / "test").rglob("*.png"))


def test_batches_score_as_single_images(knn_run, demo_root):
    paths = _test_images(demo_root)
    one = adcli.load(knn_run, device="cpu", batch_size=1).predict(paths, category="disc")
    four = adcli.load(knn_run, device="cpu", batch_size=4).predict(paths, category="disc")
    assert len(one) == len(paths) >= 4
    for a, b in zip(one, four):
        assert abs(a.score - b.score) <= 1e-6 * max(1.0, abs(a.score))
        assert np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-5, atol=1e-6)


def test_predict_takes_paths_images_and_arrays(knn_run, demo_root, tmp_path):
    det = adcli.load(knn_run, device="cpu")
    path = _test_images(demo_root)[0]
    image = Image.open(path)
    big = save_png(tmp_path / "big.png", np.asarray(image.convert("RGB").resize((48, 40))))
    r = det.predict(path, category="disc")
    assert r.category == "disc" and r.anomaly_map.shape == (image.height, image.width)
    assert r.verdict == ("DEFECT" if r.score >= r.threshold else "OK")
    assert r.threshold == det.calibration.categories["disc"].threshold
    assert 0 <= r.score_normalised <= 1 and (r.score_normalised >= 0.5) == (r.verdict == "DEFECT")
    assert r.score_normalised == det.calibration.categories["disc"].normalised(r.score)
    same = det.predict([image, np.asarray(image.convert("RGB")), np.asarray(image.convert("L"))], category="disc")
    assert [s.score for s in same[:2]] == [r.score, r.score]
    assert det.predict(big, category="disc").anomaly_map.shape == (40, 48)  # the map comes back at the image's size
    auto = det.predict(path)  # routed by the router calibrate built
    assert auto.category == "disc" and auto.score == r.score


def test_bad_inputs_are_one_line_errors(knn_run):
    det = adcli.load(knn_run, device="cpu")
    with pytest.raises(AdcliError, match="uint8"):
        det.predict(np.zeros((8, 8, 3), np.float32), category="disc")
    with pytest.raises(AdcliError, match="cannot read an image from int"):
        det.predict(3)
    with pytest.raises(AdcliError, match="category 'gear' is not in this model"):
        det.predict(np.zeros((8, 8, 3), np.uint8), category="gear")


def test_uncalibrated_model_needs_a_category_and_gives_no_verdict(knn_run, demo_root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(knn_run, bare)
    (bare / "calibration.json").unlink()
    det = Detector.load(bare, "cpu")
    with pytest.raises(AdcliError, match="needs the router"):
        det.predict(_test_images(demo_root)[0])
    r = det.predict(_test_images(demo_root)[0], category="disc")
    assert r.verdict == "uncalibrated" and r.threshold is None and r.score is not None and r.score_normalised is None


def test_stream_keeps_order_and_passes_unscored_items_through(knn_run):
    det = Detector.load(knn_run, "cpu", batch_size=2)
    image = Image.new("RGB", (det.image_size, det.image_size))
    items = list(range(7))
    out = list(det.stream(items, lambda i: ToScore(image, f"scored {i}", "disc") if i % 3 else f"skip {i}"))
    assert [r.item for r in out] == items
    assert [r.judged is None for r in out] == [i % 3 == 0 for i in items]
    assert [r.payload for r in out] == [f"scored {i}" if i % 3 else f"skip {i}" for i in items]
    assert all(r.judged.verdict in ("OK", "DEFECT") and r.judged.category == "disc" for r in out if r.judged)
    scores = [r.judged.score for r in out if r.judged is not None]
    assert np.allclose(scores, scores[0], rtol=1e-5)  # same image; batches of 1 and 2 differ only in float rounding


def test_readme_python_example_runs(knn_run, demo_root, tmp_path, monkeypatch):
    block = re.search(r"<!-- python-api-example -->\s*```python\n(.*?)```", README.read_text(), re.S).group(1)
    shutil.copytree(knn_run, tmp_path / "runs" / "knn")
    shutil.copy(_test_images(demo_root)[0], tmp_path / "part.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})


def test_auto_category_routes_each_batch_in_one_call(knn_run, demo_root, monkeypatch):
    det = Detector.load(knn_run, "cpu", batch_size=3)
    calls = []
    nearest_views = det.router.nearest_views
    monkeypatch.setattr(det.router, "nearest_views", lambda views: calls.append(len(views)) or nearest_views(views))
    paths = (_test_images(demo_root) * 7)[:7]
    auto = det.predict(paths)
    assert calls == [3, 3, 1]  # one router call per model batch, not one per image
    fixed = det.predict(paths, category="disc")
    assert [a.category for a in auto] == ["disc"] * 7 and [a.score for a in auto] == [f.score for f in fixed]


def test_cpu_dtype_bf16_scores_under_autocast_and_fp32_does_not(knn_run, demo_root, monkeypatch):
    from adcli.model.recipe import load_recipe
    from adcli.core.errors import RecipeError

    with pytest.raises(RecipeError, match="inference.cpu_dtype must be fp32, bf16 or auto"):
        load_recipe("knn", "test", ["inference.cpu_dtype=half"])
    det = adcli.load(knn_run, device="cpu")
    assert det.model.cpu_dtype == "fp32" and not det.bf16
    seen = []
    predict = det.model.predict
    monkeypatch.setattr(det.model, "predict", lambda *a: (seen.append(torch.is_autocast_enabled('cpu')), predict(*a))[1])
    paths = _test_images(demo_root)[:3]
    fp32 = det.predict(paths, category="disc")
    det.bf16 = True  # what `inference.cpu_dtype: bf16` (or auto on a bf16 CPU) gives
    bf16 = det.predict(paths, category="disc")
    assert seen == [False, True]
    assert [r.score for r in fp32] != [r.score for r in bf16]
    assert np.isfinite([r.score for r in bf16]).all()  # (knn's tiny test distances lose most digits in bf16)


def test_cpu_dtype_auto_is_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch):
    from adcli.core import device as runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for has in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda has=has: has)
        assert runtime.scores_in_bf16("auto", cpu) is has
        assert runtime.scores_in_bf16("bf16", cpu) and not runtime.scores_in_bf16("fp32", cpu)
        assert not runtime.scores_in_bf16("auto", cuda) and not runtime.scores_in_bf16("bf16", cuda)


def test_cpu_dtype_changes_no_stage_fingerprint():
    from adcli.model.recipe import load_recipe
    from adcli.model.registry import get_method

    def settings(overrides):
        config = load_recipe("timenet", "test", ["scoring.normaliser=normals", *overrides]).config
        return [s.settings for s in get_method("timenet").method_cls(config, ["a"], load_pretrained=False).stages()]

    assert settings([]) == settings(["inference.cpu_dtype=bf16"])
    assert load_recipe("timenet", "cpu").config.inference.cpu_dtype == "auto"


def test_an_image_like_no_product_is_scored_under_its_nearest_one(knn_run, demo_root):
    det = Detector.load(knn_run, "cpu")
    mask = sorted((demo_root / "disc" / "ground_truth").rglob("*.png"))[0]  # black and white: no product
    p = det.predict(mask)
    assert p.far_from_products and p.category in det.categories and np.isfinite(p.score) and p.threshold is not None
    assert p.verdict == ("DEFECT" if p.score >= p.threshold else "UNKNOWN_CATEGORY")
    assert not det.predict(_test_images(demo_root)[0]).far_from_products


def _edit_meta(run, **fields):
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, **fields}))


@pytest.mark.parametrize("field, value, trained", [
    ("image_size", 256, "32"),
    ("categories", ["weave", "disc"], '["disc", "weave"]'),  # the order gives the category ids
])
def test_a_meta_json_edited_to_change_scores_is_refused(knn_run, tmp_path, field, value, trained):
    copy = tmp_path / "run"
    shutil.copytree(knn_run, copy)
    _edit_meta(copy, **{field: value})
    message = (f"'{field}' is {json.dumps(value)} but the model was trained with {trained}; the bundle was edited: "
               "restore meta.json or train again")
    with pytest.raises(BundleError, match=re.escape(message)):
        Detector.load(copy, "cpu")
    _edit_meta(copy, profile="renamed", train_seconds=1.0)  # a summary field changes no score
    _edit_meta(copy, **{field: json.loads(trained)})
    assert Detector.load(copy, "cpu").calibration is not None


def test_a_bundle_without_trained_settings_in_its_weights_is_checked_against_its_recipe(knn_run, tmp_path):
    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"  # written before model.safetensors carried meta.json's scoring fields
    shutil.copytree(knn_run, old)
    save_file(load_file(old / "model.safetensors"), old / "model.safetensors")
    (old / "calibration.json").unlink()  # made for the weights file with metadata
    assert Detector.load(old, "cpu").image_size == 32
    _edit_meta(old, image_size=256)
    with pytest.raises(BundleError, match=re.escape("'image_size' is 256 but the model was trained with 32")):
        Detector.load(old, "cpu")


def test_normalised_score_is_exactly_half_at_the_threshold(knn_run, demo_root, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(knn_run, copy)
    path = _test_images(demo_root)[0]
    first = adcli.load(copy, device="cpu").predict(path, category="disc")
    calibrate(copy, thresholds={"disc": first.score}, device="cpu")  # the threshold set to this image's score
    again = adcli.load(copy, device="cpu").predict(path, category="disc")
    assert again.score == first.score and again.verdict == "DEFECT" and again.score_normalised == 0.5
