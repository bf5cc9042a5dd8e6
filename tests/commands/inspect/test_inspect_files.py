"""`adcli inspect FILE [FILE...]` (adcli/commands/inspect/files.py): exactly the given files, one line
each, the rows and exit codes of a folder run; and the normalised score in every row."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest

from adcli.cli import main
from adcli.commands.calibrate import calibrate
from adcli.commands.inspect import RESULT_FIELDS, inspect_files, inspect_folder
from adcli.commands.inspect.journal import read_journal
from adcli.commands.train import train
from adcli.inference.detector import Detector
from adcli.model.recipe import load_recipe
from tests.conftest import save_png

FIELDS_BEFORE = ("path", "sha256", "category", "score", "threshold", "verdict", "ms", "model_id", "heatmap", "error", "note")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parts")
    return [save_png(folder / f"part_{i}.png", np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8))
            for i in range(3)]


@pytest.fixture(scope="module")
def model(prepared, images, tmp_path_factory):
    """disc's threshold set by hand to the exact score of the highest-scoring image: that one is DEFECT at
    exactly 0.5 on the shared scale, the others OK."""
    run = train(prepared, tmp_path_factory.mktemp("files") / "run", load_recipe("diffusionad", "test"), device="cpu")
    calibrate(run, prepared, 0.05, device="cpu")
    scores = [p.score for p in Detector.load(run, "cpu", batch_size=1).predict(images, category="disc")]
    assert len(set(scores)) == len(scores)
    calibrate(run, thresholds={"disc": max(scores)}, device="cpu")
    return run, scores


def _cli(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["adcli", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _args(run, *paths, out):
    return ["inspect", *paths, "--model", run, "--out", out, "--category", "disc", "--settle-seconds", "0",
            "--device", "cpu"]


def test_an_ok_file_exits_0_with_one_line_and_the_rows_of_a_folder_run(model, images, tmp_path, monkeypatch, capsys):
    (run, scores), out = model, tmp_path / "out"
    ok = images[int(np.argmin(scores))]
    code, stdout, _ = _cli(_args(run, ok, out=out), monkeypatch, capsys)
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"OK  {ok}  score 0.") and "(raw " in lines[0], stdout
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(ok)] and rows[0]["verdict"] == "OK"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"] == [str(ok)] and summary["counts"]["OK"] == 1 and summary["exit_code"] == 0


def test_a_defect_file_exits_1_at_exactly_half_with_its_heatmap(model, images, tmp_path, monkeypatch, capsys):
    (run, scores), out = model, tmp_path / "out"
    defect = images[int(np.argmax(scores))]
    code, stdout, _ = _cli(_args(run, defect, out=out), monkeypatch, capsys)
    row = read_journal(out / "results.jsonl").rows[0]
    assert code == 1 and row["verdict"] == "DEFECT" and row["score_normalised"] == "0.5000"  # at the threshold
    assert row["score"] == f"{max(scores):.6g}" and (out / row["heatmap"]).is_file()
    assert stdout.strip() == (f"DEFECT  {defect}  score 0.5000 (raw {row['score']}, threshold {row['threshold']})  "
                              f"heatmap {out / row['heatmap']}")


def test_several_files_in_order_share_rows_with_a_folder_run_and_a_rerun_says_force(model, images, tmp_path,
                                                                                   monkeypatch, capsys):
    run, _ = model
    out = tmp_path / "out"
    folder_run = inspect_folder(images[0].parent, run, out, category="disc", device="cpu", settle_seconds=0,
                                heatmaps="all")
    heatmaps = sorted(p.name for p in (out / "heatmaps").iterdir())
    # The same files by hand (one twice, one by another spelling): nothing new to judge.
    again = [images[2], images[0], images[0].parent / ".." / images[0].parent.name / images[0].name]
    code, stdout, err = _cli(_args(run, *again, out=out), monkeypatch, capsys)
    assert code == 0 and "2 already inspected (--force judges them again)" in err
    lines = stdout.splitlines()
    assert [line.split("  ")[1] for line in lines] == [str(images[2]), str(images[0])]
    assert all("--force judges it again" in line for line in lines)
    summary = inspect_files(again, run, out, category="disc", device="cpu", settle_seconds=0, heatmaps="all", force=True)
    assert [r["path"] for r in summary.rows] == [str(images[2]), str(images[0])]
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == heatmaps  # the folder run's names
    assert len(read_journal(out / "results.jsonl").rows) == len(folder_run.rows) == 3


def test_a_missing_file_is_one_line_and_nothing_is_written(model, images, tmp_path, monkeypatch, capsys):
    run, _ = model
    code, stdout, err = _cli(_args(run, images[0], tmp_path / "part_9.png", out=tmp_path / "out"), monkeypatch, capsys)
    assert code == 2 and stdout == "" and not (tmp_path / "out").exists()
    assert err.strip().splitlines() == [f"error: no such file: {tmp_path / 'part_9.png'}; nothing was inspected"]


def test_a_file_that_is_no_image_is_an_error_row_with_exit_3(model, tmp_path, monkeypatch, capsys):
    run, _ = model
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, stdout, _ = _cli(_args(run, notes, out=tmp_path / "out"), monkeypatch, capsys)
    row = read_journal(tmp_path / "out" / "results.jsonl").rows[0]
    assert code == 3 and row["verdict"] == "ERROR" and "not an image" in row["error"]
    assert stdout.strip() == f"ERROR  {notes}  {row['error']}"


def test_a_folder_with_files_or_a_watch_of_files_is_refused_in_one_line(model, images, tmp_path, monkeypatch, capsys):
    run, _ = model
    code, _, err = _cli(_args(run, images[0].parent, images[0], out=tmp_path / "out"), monkeypatch, capsys)
    assert code == 2 and err.strip() == f"error: give one folder, or image files, not both: {images[0].parent} is a folder"
    code, _, err = _cli([*_args(run, images[0], out=tmp_path / "out"), "--watch", "1"], monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: --watch takes one folder, not files"
    assert not (tmp_path / "out").exists()


def test_every_row_has_a_normalised_score_next_to_the_unchanged_raw_one(model, images, tmp_path):
    run, scores = model
    out = tmp_path / "out"
    summary = inspect_folder(images[0].parent, run, out, category="disc", device="cpu", settle_seconds=0)
    assert RESULT_FIELDS[:len(FIELDS_BEFORE)] == FIELDS_BEFORE and RESULT_FIELDS[-1] == "score_normalised"  # appended
    with open(out / "results.csv", newline="") as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == RESULT_FIELDS
    by_path = {r["path"]: r for r in read_journal(out / "results.jsonl").rows}
    cal = Detector.load(run, "cpu").calibration.categories["disc"]
    for cells, image, raw in zip(table[1:], images, scores):
        row = dict(zip(RESULT_FIELDS, cells))
        assert row == {k: by_path[row["path"]][k] for k in RESULT_FIELDS}  # CSV and JSONL agree
        assert row["score"] == f"{raw:.6g}"  # the raw score as before
        value = float(row["score_normalised"])
        assert 0 <= value <= 1 and (value >= 0.5) == (row["verdict"] == "DEFECT")
        assert row["score_normalised"] == f"{cal.normalised(raw):.4f}"
    ranked = sorted(zip(scores, [float(r[-1]) for r in table[1:]]))
    assert [v for _, v in ranked] == sorted(v for _, v in ranked)  # monotone in the raw score
    record = json.loads((out / "summary.json").read_text())["score_normalised"]["disc"]
    assert record["n"] == 3 and record["max"] == 0.5 and record["max_path"] == str(images[int(np.argmax(scores))])
    assert summary.record["score_normalised"] == {"disc": record}


def test_scores_only_rows_have_an_empty_normalised_score(model, images, tmp_path):
    run, _ = model
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "calibration.json").unlink()
    summary = inspect_files(images[:1], bare, tmp_path / "out", category="disc", device="cpu", settle_seconds=0,
                            scores_only=True)
    row = summary.rows[0]
    assert row["verdict"] == "uncalibrated" and row["score"] and row["score_normalised"] == ""
    assert summary.record["score_normalised"] == {} and summary.exit_code == 6
