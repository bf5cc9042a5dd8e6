"""adcli export: the exported graph scores like torch (any batch size, each image's category), and
inspect/report run through it; a stale or missing export is refused with one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from adcli.data.manifest import load_manifest
from adcli.inference.detector import Detector
from adcli.core.errors import AdcliError, BundleError, UsageError
from adcli.inference.export import MAX_BATCH, TOLERANCE, calls, export
from adcli.core.io import read_image
from adcli.model.recipe import load_recipe
from adcli.data.batches import resized
from adcli.commands.train import train
from conftest import recipe_with_weights

onnxruntime = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: pip install 'adcli[onnx]'")
pytest.importorskip("onnxscript", reason="onnxscript not installed: pip install 'adcli[onnx]'")


def _test_images(prepared, size):
    samples = [s for s in load_manifest(prepared) if s.split == "test"]
    return np.stack([resized(read_image(s.path), size) for s in samples]), [s.category for s in samples]


def _equal_to_torch(run, prepared, backend):
    """Scores and maps of every demo test image through `backend` vs torch, batch sizes 1 and 5."""
    reference = Detector.load(run, "cpu")
    pixels, categories = _test_images(prepared, reference.image_size)
    want_scores, want_maps = reference.score_pixels(pixels, categories)
    exported = Detector.load(run, "cpu", backend=backend)
    for batch in (1, 5):
        got = [exported.score_pixels(pixels[i:i + batch], categories[i:i + batch]) for i in range(0, len(pixels), batch)]
        scores, maps = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
        scale = max(1.0, float(np.abs(want_scores).max()))
        assert np.abs(scores - want_scores).max() <= TOLERANCE * scale, (backend, batch)
        assert np.abs(maps - want_maps).max() <= 1e-3 * scale, (backend, batch)


@pytest.fixture(scope="module")
def knn_run(prepared, mobilenet_weights, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("export") / "knn", recipe_with_weights("knn", mobilenet_weights), device="cpu")


@pytest.mark.slow
def test_knn_exports_to_onnx_and_openvino_and_scores_like_torch(knn_run, prepared):
    pytest.importorskip("openvino", reason="OpenVINO not installed: pip install 'adcli[openvino]'")
    (knn_run / ".export-killed").mkdir()  # an earlier export killed mid-way: cleared, never read
    info = export(knn_run, ["onnx", "openvino"])
    assert info["batch_by_category"] is True  # knn's graph searches the largest bank in a call
    assert not (knn_run / ".export-killed").exists()
    assert {c["backend"] for c in info["checked"]} == {"onnx", "openvino"}
    assert info["inputs"]["category_ids"] == ["batch"] and info["model_id"]
    assert {p.name for p in (knn_run / "export").iterdir()} == {"model.onnx", "model.xml", "model.bin", "export.json"}
    for backend in ("onnx", "openvino"):
        _equal_to_torch(knn_run, prepared, backend)


@pytest.mark.slow
def test_diffusionad_exports_and_scores_like_torch(prepared, tmp_path):
    # The cpu profile's standardised image score: the per-category statistics travel in the graph too.
    recipe = load_recipe("diffusionad", "test", ["scoring.image_score=standardised", "scoring.normal_images=3"])
    run = train(prepared, tmp_path / "diffusionad", recipe, device="cpu")
    export(run, ["onnx"])
    _equal_to_torch(run, prepared, "onnx")


def test_a_standardised_image_score_exports_and_scores_like_torch(prepared, mobilenet_weights, tmp_path):
    recipe = load_recipe("uniad", "test", [f"backbone.weights={mobilenet_weights}", "scoring.image_score=standardised",
                                            "scoring.normal_images=3"])
    run = train(prepared, tmp_path / "uniad", recipe, device="cpu")
    export(run, ["onnx"])
    _equal_to_torch(run, prepared, "onnx")  # both categories' statistics, chosen by the category input


def test_a_missing_or_stale_export_is_refused(knn_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(knn_run, run, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(BundleError, match="no exported model; run `adcli export"):
        Detector.load(run, backend="onnx")
    (run / "export").mkdir()
    (run / "export" / "export.json").write_text(json.dumps({"model_id": "another", "formats": ["onnx"]}))
    with pytest.raises(BundleError, match="made from another model"):
        Detector.load(run, backend="onnx")
    with pytest.raises(BundleError, match="exported as onnx, not openvino"):
        Detector.load(run, backend="openvino")
    with pytest.raises(AdcliError, match="runs on the CPU"):
        Detector.load(run, device="cuda", backend="onnx")
    with pytest.raises(UsageError, match="unknown tflite"):
        export(run, ["tflite"])


def test_export_and_inspect_commands(knn_run, demo_root, tmp_path):
    """The commands a user types, exit codes and one-line errors included (export reuses the module's graph)."""
    if not (knn_run / "export" / "export.json").is_file():
        export(knn_run, ["onnx"])
    out = tmp_path / "inspected"
    run = subprocess.run([sys.executable, "-m", "adcli", "inspect", str(demo_root / "disc" / "test"), "--model", str(knn_run),
                          "--out", str(out), "--category", "disc", "--backend", "onnx", "--scores-only"],
                         capture_output=True, text=True)
    assert run.returncode == 6, run.stderr  # scores, no verdicts: the model is not calibrated
    assert "Speed:" in run.stdout + run.stderr and (out / "results.csv").is_file()
    assert json.loads((out / "summary.json").read_text())["backend"] == "onnx"
    bad = subprocess.run([sys.executable, "-m", "adcli", "export", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.count("\n") <= 2 and "nothing" in bad.stderr


def test_calls_split_a_batch_by_category_and_max_batch():
    ids = np.array([2, 0, 2, 1, 0])
    assert [g.tolist() for g in calls(ids, by_category=False)] == [[0, 1, 2, 3, 4]]
    assert [g.tolist() for g in calls(ids, by_category=True)] == [[1, 4], [3], [0, 2]]
    long = np.zeros(MAX_BATCH + 2, dtype=np.int64)
    assert [len(g) for g in calls(long, by_category=True)] == [MAX_BATCH, 2]
