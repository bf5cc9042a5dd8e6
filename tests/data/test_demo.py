import json

from adcli.data.demo import demo_verdict


def _report(tmp_path, image, pixel):
    rows = [{"category": "disc", "image_auroc": 1.0, "pixel_auroc": 1.0},
            {"category": "mean", "image_auroc": image, "pixel_auroc": pixel}]
    (tmp_path / "metrics.json").write_text(json.dumps({"categories": rows}))
    return tmp_path


def test_a_demo_model_below_the_floor_is_labelled_a_smoke_run(tmp_path):
    line = demo_verdict(_report(tmp_path, 0.799, 0.95), "diffusionad")
    assert line.startswith("diffusionad demo model: image AUROC 79.9, pixel AUROC 95.0: a SMOKE RUN only (below 80)")
    assert "SMOKE" in demo_verdict(_report(tmp_path, 0.95, 0.462), "diffusionad")


def test_a_demo_model_above_the_floor_on_both_is_good(tmp_path):
    assert demo_verdict(_report(tmp_path, 1.0, 0.987), "knn") == \
        "knn demo model: image AUROC 100.0, pixel AUROC 98.7: good (both >= 80)"


def test_a_folder_without_a_report_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "adcli.data.demo", "--verdict", str(tmp_path), "knn"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
