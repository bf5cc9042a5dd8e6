"""adcli calibrate's sources: a prepared calib split, a folder of normals, thresholds set by hand."""

import io
import json
import re
import shutil

import numpy as np
import pytest
from conftest import run_cli
from rich.console import Console

from adcli.bundle import calibration_files as calibration_files_module
from adcli.commands.calibrate import calibrate, parse_thresholds
from adcli.inference.detector import Detector
from adcli.core.errors import AdcliError, BundleError, DataError, PartlyCalibrated
from adcli.bundle.calibration_files import CalibrationFiles
from adcli.commands.synthetic_defects import copies_for
from adcli.commands.train import train
from adcli.data.defects import FAMILIES, SIZES
from adcli.data.manifest import load_manifest
from tests.conftest import recipe_with_weights


@pytest.fixture(scope="module")
def knn_run(prepared, mobilenet_weights, tmp_path_factory):
    return train(prepared, tmp_path_factory.mktemp("cal") / "run", recipe_with_weights("knn", mobilenet_weights),
                 device="cpu")


@pytest.fixture
def run(knn_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(knn_run, copy)
    return copy


def test_too_few_normals_are_refused_saying_how_many_more(run, demo_root, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((demo_root / "disc" / "validation" / "good").glob("*.png"))[:3]:
        shutil.copy(p, few / p.name)
    with pytest.raises(DataError, match=r"only 3 calibration normals; at least 20 are needed \(17 more\).*--allow-few"):
        calibrate(run, normals=few, category="disc", device="cpu")
    assert not (run / "calibration.json").exists()
    cal = calibrate(run, normals=few, category="disc", device="cpu", allow_few=True, target_fpr=0.2)
    assert cal.categories["disc"].n_normals == 3


def test_normals_folder_recalibrates_one_category_and_keeps_the_others(run, prepared, demo_root):
    first = calibrate(run, prepared, 0.2, device="cpu")
    assert {c.source for c in first.categories.values()} == {"prepared"}
    folder = demo_root / "disc" / "validation" / "good"
    cal = calibrate(run, normals=folder, category="disc", target_fpr=0.1, device="cpu")
    disc = cal.categories["disc"]
    assert disc.source == "normals" and disc.source_path == str(folder.resolve()) and disc.n_normals == 24
    assert disc.target_fpr == 0.1 and cal.categories["weave"] == first.categories["weave"]
    det = Detector.load(run, "cpu")
    assert det.router is not None and det.router.categories == ["disc", "weave"]
    with pytest.raises(AdcliError, match="add --category"):
        calibrate(run, normals=folder, device="cpu")


def test_threshold_by_hand_is_stored_as_manual_and_used(run, prepared, demo_root):
    before = calibrate(run, prepared, 0.2, device="cpu")
    cal = calibrate(run, thresholds={"disc": 1e6}, device="cpu")
    assert cal.categories["disc"].threshold == 1e6 and cal.categories["disc"].source == "manual"
    assert cal.categories["disc"].n_above == 0 and cal.categories["weave"] == before.categories["weave"]
    result = Detector.load(run, "cpu").predict(sorted((demo_root / "disc" / "test").rglob("*.png"))[0], category="disc")
    assert result.threshold == 1e6 and result.verdict == "OK"
    with pytest.raises(AdcliError, match="'gear' is not in this model"):
        calibrate(run, thresholds={"gear": 1.0}, device="cpu")


def test_threshold_needs_normals_for_a_category_never_calibrated(run):
    with pytest.raises(AdcliError, match="disc has no calibration normals yet"):
        calibrate(run, thresholds={"disc": 0.5}, device="cpu")
    with pytest.raises(AdcliError, match="nothing to calibrate from"):
        calibrate(run, device="cpu")


@pytest.mark.parametrize("bad", ["disc", "disc=", "=0.5", "disc=high", "disc=nan"])
def test_threshold_syntax_errors_say_the_form(bad):
    with pytest.raises(AdcliError, match="expected CATEGORY=NUMBER"):
        parse_thresholds([bad])
    assert parse_thresholds(["disc=0.5", "weave = 2"]) == {"disc": 0.5, "weave": 2.0}


def _routers(run):
    return sorted(p.name for p in run.glob("routing*.safetensors"))


_cli = run_cli


def test_a_calibration_killed_after_its_router_leaves_the_old_calibration_working(run, prepared, demo_root, monkeypatch):
    first = calibrate(run, prepared, 0.2, device="cpu")
    router_before = Detector.load(run, "cpu").router

    def killed(self, calibration):  # the process dies after the new router is written, before calibration.json
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(CalibrationFiles, "write_calibration", killed)
        with pytest.raises(KeyboardInterrupt):
            calibrate(run, normals=demo_root / "disc" / "validation" / "good", category="disc", device="cpu")
    det = Detector.load(run, "cpu")  # refused before: "routing.safetensors does not belong to calibration.json"
    assert det.calibration == first and det.router.categories == router_before.categories
    again = calibrate(run, normals=demo_root / "disc" / "validation" / "good", category="disc", device="cpu")
    assert again.categories["disc"].source == "normals" and Detector.load(run, "cpu").router is not None
    # The router is named by its hash; only the routers of calibration.json and calibration.prev.json stay.
    files = CalibrationFiles(run).calibration_files()
    assert files == [run / "calibration.json", run / f"routing-{again.routing[:16]}.safetensors"]
    assert _routers(run) == sorted({f"routing-{first.routing[:16]}.safetensors", files[1].name})


def test_a_calibration_written_before_hashed_router_names_still_loads(run, prepared, demo_root):
    cal = calibrate(run, prepared, 0.2, device="cpu")
    (run / f"routing-{cal.routing[:16]}.safetensors").rename(run / "routing.safetensors")  # the old layout
    det = Detector.load(run, "cpu")
    assert det.calibration == cal and det.router.categories == ["disc", "weave"]
    assert CalibrationFiles(run).calibration_files()[1] == run / "routing.safetensors"
    folder = demo_root / "disc" / "validation" / "good"
    calibrate(run, normals=folder, category="disc", device="cpu")
    assert "routing.safetensors" in _routers(run)  # calibration.prev.json still names it
    newest = calibrate(run, normals=folder, category="disc", device="cpu")
    assert "routing.safetensors" not in _routers(run) and Detector.load(run, "cpu").calibration == newest


def _other_model(run):
    tree = json.loads((run / "calibration.json").read_text())
    (run / "calibration.json").write_text(json.dumps({**tree, "model_id": "0123456789ab"}))


def _router_lost(run):
    for path in run.glob("routing*.safetensors"):
        path.unlink()


def _unknown_category(run):
    tree = json.loads((run / "calibration.json").read_text())
    tree["categories"]["gear"] = tree["categories"]["disc"]
    (run / "calibration.json").write_text(json.dumps(tree))


@pytest.mark.parametrize("damage, refusal", [
    (_other_model, "was made for another model"),
    (_router_lost, "is missing or does not belong to"),
    (lambda run: (run / "calibration.json").write_text("{not json"), "unreadable"),
    (_unknown_category, "holds category 'gear', which is not one of the model's (disc, weave)"),
])
def test_calibrate_writes_over_a_calibration_inspect_refuses(run, prepared, demo_root, tmp_path, monkeypatch, capsys,
                                                             damage, refusal):
    calibrate(run, prepared, 0.2, device="cpu")
    damage(run)
    with pytest.raises(BundleError, match=re.escape(refusal)):
        Detector.load(run, "cpu")
    code, err = _cli(["inspect", demo_root / "disc" / "test" / "good", "--model", run, "--out", tmp_path / "out",
                      "--category", "disc", "--device", "cpu", "--settle-seconds", "0"], monkeypatch, capsys)
    assert code == 2 and refusal in err and f"run `adcli calibrate {run}` again" in err and err.count("\n") == 1, err
    # The command the refusal names works, says in one line what it replaced, and keeps none of it.
    code, err = _cli(["calibrate", run, "--normals", demo_root / "disc" / "validation" / "good", "--category", "disc",
                      "--device", "cpu"], monkeypatch, capsys)
    assert code is None or code == 0, err
    # (this knn on random MobileNetV2 weights also fails its self-check: that warning is not the one counted)
    warnings = [line for line in err.splitlines() if line.startswith("warning:") and "cannot reliably see" not in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: replacing the calibration: ") and refusal in warnings[0]
    det = Detector.load(run, "cpu")
    assert list(det.calibration.categories) == ["disc"] and det.router.categories == ["disc"]


def test_a_padded_calibration_is_refused_unread(run, prepared, monkeypatch):
    cal = calibrate(run, prepared, 0.2, device="cpu")
    size = (run / "calibration.json").stat().st_size
    assert size * 1000 < calibration_files_module.CALIBRATION_MAX_BYTES  # the bound is generous for a real one
    monkeypatch.setattr(calibration_files_module, "CALIBRATION_MAX_BYTES", 2 * size)
    # Padding that is not even JSON: parsing it would say "unreadable"; the bound refuses it first.
    (run / "calibration.json").write_text((run / "calibration.json").read_text() + " " * (2 * size) + "{")
    with pytest.raises(BundleError, match=r"calibration.json is [\d.]+ MB, more than any calibration holds"):
        Detector.load(run, "cpu")
    assert calibrate(run, prepared, 0.2, device="cpu").categories.keys() == cal.categories.keys()


def _short_prepared(prepared, tmp_path, keep: dict[str, int]):
    """A copy of the prepared dataset whose calib split keeps only keep[category] normals of a category."""
    out = tmp_path / "short"
    out.mkdir()
    rows, seen = [], {}
    for line in (prepared / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "calib" and row["category"] in keep:
            seen[row["category"]] = seen.get(row["category"], 0) + 1
            if seen[row["category"]] > keep[row["category"]]:
                continue
        rows.append(line + "\n")
    (out / "manifest.jsonl").write_text("".join(rows))
    return out


def test_one_category_short_of_normals_is_left_out_and_the_others_calibrated(run, prepared, demo_root, tmp_path,
                                                                             monkeypatch, capsys):
    short = _short_prepared(prepared, tmp_path, {"weave": 3})
    code, err = _cli(["calibrate", run, "--data", short, "--target-fpr", "0.2", "--device", "cpu"], monkeypatch, capsys)
    assert code == 7
    assert re.search(r"warning: left out weave: only 3 calibration normals; at least 20 are needed \(17 more\).*"
                     r"--normals FOLDER --category weave.*--calib-fraction.*--allow-few; it stays uncalibrated", err)
    assert "partly calibrated: calibrated disc; left out weave" in err
    cal = json.loads((run / "calibration.json").read_text())
    assert list(cal["categories"]) == ["disc"]
    det = Detector.load(run, "cpu")
    assert det.router.categories == ["disc", "weave"]  # routing still knows weave: its images are not sent to disc

    images = tmp_path / "in"
    images.mkdir()
    shutil.copy(next((demo_root / "disc" / "test" / "good").glob("*.png")), images / "disc.png")
    shutil.copy(next((demo_root / "weave" / "test" / "good").glob("*.png")), images / "weave.png")
    inspect = ["inspect", images, "--model", run, "--settle-seconds", "0", "--device", "cpu"]
    code, err = _cli([*inspect, "--out", tmp_path / "o1", "--category", "weave"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "no threshold for weave" in err
    code, err = _cli([*inspect, "--out", tmp_path / "o2", "--category", "disc"], monkeypatch, capsys)
    assert code in (0, 1)
    code, err = _cli([*inspect, "--out", tmp_path / "o3"], monkeypatch, capsys)  # --category auto
    rows = [json.loads(line) for line in (tmp_path / "o3" / "results.jsonl").read_text().splitlines()]
    assert all(r["verdict"] == "uncalibrated" for r in rows if r["category"] == "weave") and code != 0
    assert "not calibrated: weave" in err


def test_a_category_left_out_keeps_its_previous_calibration(run, prepared, tmp_path):
    first = calibrate(run, prepared, 0.2, device="cpu")
    with pytest.raises(PartlyCalibrated) as info:
        calibrate(run, _short_prepared(prepared, tmp_path, {"disc": 5}), 0.1, device="cpu")
    assert info.value.left_out == ["disc"] and info.value.exit_code == 7
    cal = Detector.load(run, "cpu").calibration
    assert cal.categories["disc"] == first.categories["disc"] and cal.categories["weave"].target_fpr == 0.1


def test_every_category_short_is_refused_writing_nothing(run, prepared, tmp_path, monkeypatch, capsys):
    short = _short_prepared(prepared, tmp_path, {"weave": 3, "disc": 0})
    code, err = _cli(["calibrate", run, "--data", short, "--device", "cpu"], monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "no category could be calibrated" in err
    assert not (run / "calibration.json").exists()


def _blind(monkeypatch):
    """Every model call returns scores that ignore the image: a model that cannot see defects."""
    rng = np.random.default_rng(0)

    def blind(self, pixels, categories):
        return rng.normal(0, 1, len(pixels)).astype(np.float32), np.zeros(pixels.shape[:3], np.float32)

    monkeypatch.setattr(Detector, "score_pixels", blind)


def test_calibration_stores_and_prints_the_self_check(run, prepared):
    out = io.StringIO()
    cal = calibrate(run, prepared, 0.2, device="cpu", console=Console(file=out, width=250))
    disc = cal.categories["disc"].self_check
    assert disc is not None and 0 <= disc.auroc <= 1 and disc.seed == 0
    assert sum(n for _, n in (disc.count(s) for s in SIZES)) == copies_for(cal.categories["disc"].n_normals)
    assert set(disc.found) == set(FAMILIES) and all(set(v) == set(SIZES) for v in disc.found.values())
    stored = json.loads((run / "calibration.json").read_text())["categories"]["disc"]["self_check"]
    assert stored["auroc"] == disc.auroc and stored["found"] == disc.found
    assert Detector.load(run, "cpu").calibration.categories["disc"].self_check == disc
    text = out.getvalue()
    assert "self-check AUROC" in text and f"{disc.auroc:.3f}" in text and "brightness" in text
    assert re.search(r"self-check: \d+ synthetic images, \d+\.\d s and \d+ labelled test defects, \d+\.\d s", text)
    # the prepared test split's labelled defects, scored beside the synthetic ones (the threshold never sees them)
    defects = [s for s in load_manifest(prepared) if s.split == "test" and s.category == "disc" and s.label == 1]
    threshold = cal.categories["disc"].threshold
    assert len(defects) > 0 and len(disc.real_scores) == len(defects)
    assert disc.real_scores[0] == pytest.approx(Detector.load(run, "cpu").predict(defects[0].path, "disc").score, rel=1e-5)
    assert disc.real_found == [sum(v >= threshold for v in disc.real_scores), len(defects)]
    assert "labelled test defects found" in text and f"{disc.real_found[0]}/{len(defects)} (" in text
    assert stored["real_found"] == disc.real_found
    again = calibrate(run, prepared, 0.2, device="cpu")  # deterministic
    assert again.categories["disc"].self_check.synthetic_scores == disc.synthetic_scores
    manual = calibrate(run, thresholds={"disc": -1e9}, device="cpu").categories["disc"].self_check
    assert manual.count("large") == (disc.count("large")[1],) * 2  # recounted at the hand-set threshold
    assert manual.real_found == [len(defects), len(defects)]


def test_no_self_check_and_older_calibrations_without_one(run, prepared):
    cal = calibrate(run, prepared, 0.2, device="cpu", self_check=False)
    assert all(c.self_check is None for c in cal.categories.values())
    path = run / "calibration.json"
    tree = json.loads(path.read_text())
    assert all(c["self_check"] is None for c in tree["categories"].values())
    for c in tree["categories"].values():  # as an adcli before the self-check wrote it
        del c["self_check"]
    path.write_text(json.dumps(tree))
    assert Detector.load(run, "cpu").calibration.categories["disc"].self_check is None


def test_a_blind_model_gets_a_warning_at_calibration(run, prepared, monkeypatch):
    _blind(monkeypatch)
    out = io.StringIO()
    cal = calibrate(run, prepared, 0.2, device="cpu", console=Console(file=out, width=250))
    assert cal.categories["disc"].self_check.weak
    assert re.search(r"warning: model \S+ cannot reliably see defects on disc: synthetic AUROC 0\.\d\d, \d+/\d+ large "
                     r"defects found", out.getvalue())
    found, defects = cal.categories["disc"].self_check.real_found  # the prepared data's labelled defects, missed too
    assert found < defects / 2 and f"finds only {found}/{defects} (" in out.getvalue()
    assert "of disc's labelled test defects" in out.getvalue()
