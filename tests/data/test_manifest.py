import shutil

import numpy as np
import pytest
from PIL import Image

from adcli.data.manifest import load_manifest, prepare, write_prepared
from adcli.core.errors import DataError
from tests.conftest import save_png


@pytest.fixture
def odd_tree(demo_root, tmp_path):
    root = tmp_path / "mvtec"
    shutil.copytree(demo_root, root)
    (root / "weave" / "train" / "good" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (root / "weave" / "train" / "good" / "empty.png").write_bytes(b"")
    (root / "weave" / "train" / "good" / "notes.txt").write_text("not an image")
    save_png(root / "weave" / "train" / "good" / "gray16.png", np.full((20, 30), 4000, np.uint16))
    save_png(root / "disc" / "train" / "good" / "rgba.png", np.zeros((40, 24, 4), np.uint8))
    save_png(root / "disc" / "test" / "spot" / "nomask.png", np.zeros((32, 32, 3), np.uint8))
    save_png(root / "disc" / "test" / "spot" / "badmask.png", np.zeros((32, 32, 3), np.uint8))
    save_png(root / "disc" / "ground_truth" / "spot" / "badmask_mask.png", np.zeros((16, 16), np.uint8))
    (root / "empty_cat" / "train" / "good").mkdir(parents=True)
    return root


def test_prepare_lists_problems_and_keeps_going(odd_tree):
    result = prepare(odd_tree, calib_fraction=0.25, seed=0)
    text = "\n".join(result.problems)
    assert "unreadable image skipped" in text and "corrupt.png" in text
    assert "empty.png" in text and "notes.txt" in text
    assert "mask missing" in text and "nomask.png" in text
    assert "differs from image size" in text
    assert "category 'empty_cat' has no readable train/good" in text
    paths = {s.path.rsplit("/", 1)[-1]: s for s in result.samples}
    assert "gray16.png" in paths and paths["gray16.png"].width == 30  # converted, not rejected
    assert "rgba.png" in paths and paths["rgba.png"].height == 40  # other sizes/aspect ratios are fine
    assert paths["badmask.png"].mask is None and paths["badmask.png"].label == 1
    with pytest.raises(DataError, match="--strict"):
        prepare(odd_tree, strict=True)


@pytest.fixture
def no_validation(demo_root, tmp_path):
    root = tmp_path / "mvtec"
    shutil.copytree(demo_root, root)
    for cat in ("weave", "disc"):
        shutil.rmtree(root / cat / "validation")
    return root


def test_calibration_split_is_held_out_and_deterministic(no_validation):
    demo_root = no_validation
    a = prepare(demo_root, calib_fraction=0.25, seed=3)
    b = prepare(demo_root, calib_fraction=0.25, seed=3)
    c = prepare(demo_root, calib_fraction=0.25, seed=4)
    calib = lambda r: sorted(s.path for s in r.samples if s.split == "calib")
    assert calib(a) == calib(b) and calib(a) != calib(c)
    rows = {r["category"]: r for r in a.summary_rows()}
    assert rows["weave"]["calib"] == 2 and rows["weave"]["train"] == 6
    assert rows["disc"]["test_good"] == 2 and rows["disc"]["test_defect"] == 3
    defect = next(s for s in a.samples if s.label == 1)
    assert defect.mask and Image.open(defect.mask).size == (32, 32)


def test_validation_good_is_the_calibration_split_where_a_dataset_has_it(no_validation, demo_root):
    shutil.rmtree(no_validation / "weave")  # one category with validation/good (disc), one without
    shutil.copytree(demo_root / "weave", no_validation / "weave")
    shutil.rmtree(no_validation / "disc" / "validation", ignore_errors=True)
    rows = {r["category"]: r for r in prepare(no_validation, calib_fraction=0.25).summary_rows()}
    assert rows["weave"]["calib"] == 24 and rows["weave"]["train"] == 8  # its own held-out normals; train kept whole
    assert rows["disc"]["calib"] == 2 and rows["disc"]["train"] == 6  # held out from train/good
    calib = [s for s in prepare(no_validation).samples if s.split == "calib" and s.category == "weave"]
    assert all("/validation/good/" in s.path and s.label == 0 for s in calib)


def test_manifest_round_trip(demo_root, tmp_path):
    result = prepare(demo_root)
    write_prepared(result, tmp_path)
    assert load_manifest(tmp_path) == result.samples
    assert (tmp_path / "summary.csv").read_text().startswith("category,train,calib,test_good,test_defect")


def test_folder_and_visa_layouts(tmp_path):
    for cat in ("a", "b"):
        for i in range(4):
            save_png(tmp_path / "f" / cat / f"{i}.png", np.zeros((8, 8, 3), np.uint8))
    result = prepare(tmp_path / "f", fmt="folder", calib_fraction=0.25)
    assert {(s.category, s.split) for s in result.samples} == {("a", "train"), ("a", "calib"), ("b", "train"), ("b", "calib")}
    visa = tmp_path / "visa"
    save_png(visa / "candle" / "Data" / "Images" / "Normal" / "0.JPG", np.zeros((8, 8, 3), np.uint8))
    save_png(visa / "candle" / "Data" / "Images" / "Normal" / "1.JPG", np.zeros((8, 8, 3), np.uint8))
    save_png(visa / "candle" / "Data" / "Images" / "Anomaly" / "2.JPG", np.zeros((8, 8, 3), np.uint8))
    save_png(visa / "candle" / "Data" / "Masks" / "Anomaly" / "2.png", np.zeros((8, 8), np.uint8))
    (visa / "split_csv").mkdir()
    (visa / "split_csv" / "1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,train,normal,candle/Data/Images/Normal/1.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/2.JPG,candle/Data/Masks/Anomaly/2.png\n")
    result = prepare(visa, fmt="visa", calib_fraction=0.5)
    test = [s for s in result.samples if s.split == "test"]
    assert len(test) == 1 and test[0].label == 1 and test[0].mask.endswith("2.png")


def test_missing_or_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no MVTec-style category"):
        prepare(tmp_path / "empty")
    with pytest.raises(DataError, match="run `adcli prepare` first"):
        load_manifest(tmp_path)


def test_prepare_warns_about_calib_splits_too_small_for_calibrate(no_validation, demo_root, tmp_path, monkeypatch,
                                                                  capsys):
    import sys

    from adcli.cli import main

    shutil.rmtree(no_validation / "weave")  # weave: 24 validation/good normals; disc: 2 held out of 8 train/good
    shutil.copytree(demo_root / "weave", no_validation / "weave")
    monkeypatch.setattr(sys, "argv", ["adcli", "prepare", str(no_validation), "--out", str(tmp_path / "p"),
                                      "--calib-fraction", "0.25"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code in (0, None) and load_manifest(tmp_path / "p")  # still prepared
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: disc: 2 calibration normals, `adcli calibrate` needs 20 and leaves it uncalibrated: "
                        "its 8 train/good images are too few to hold out 20 and still train: calibrate it with `adcli calibrate RUN --normals FOLDER --category disc`"]


def test_calibration_warning_names_the_calib_fraction_that_would_be_enough():
    from adcli.data.manifest import PrepareResult, Sample, calib_fraction_for

    assert calib_fraction_for(200, 20) == 0.1 and calib_fraction_for(60, 20) == 0.33  # round(19.8) = 20
    assert calib_fraction_for(20, 20) is None  # one image must stay to train
    samples = [Sample(f"/x/{c}/{i}.png", c, "calib" if i < k else "train", 0, "good")
               for c, k, n in (("plate", 6, 60), ("screw", 20, 200), ("cap", 3, 30)) for i in range(n)]
    result = PrepareResult(samples, [], frozenset({"cap"}))
    assert result.calibration_warnings(20) == [
        "cap: 3 calibration normals, `adcli calibrate` needs 20 and leaves it uncalibrated: add good images to its "
        "validation/good, or calibrate it with `adcli calibrate RUN --normals FOLDER --category cap`",
        "plate: 6 calibration normals, `adcli calibrate` needs 20 and leaves it uncalibrated: prepare with "
        "--calib-fraction 0.33 (holds out 20 of its 60 train/good images, 40 left to train), or calibrate it with "
        "`adcli calibrate RUN --normals FOLDER --category plate`"]
