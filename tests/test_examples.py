"""Example scripts that generate data: they run, and what they write is a dataset `adcli prepare` takes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcli.data.manifest import prepare

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_fine_pattern_writes_an_mvtec_category_with_small_masked_defects(tmp_path):
    subprocess.run([sys.executable, str(EXAMPLES / "fine_pattern.py"), str(tmp_path), "--period", "4", "--size", "96"],
                   check=True, capture_output=True)
    root = tmp_path / "fine4_96"
    assert len(list((root / "train" / "good").iterdir())) == 200
    for kind in ("broken", "glue", "bent", "thread"):
        masks = sorted((root / "ground_truth" / kind).iterdir())
        assert len(masks) == len(list((root / "test" / kind).iterdir())) == 15
        areas = [(np.asarray(Image.open(m)) > 0).mean() for m in masks]
        assert all(0 < a < 0.05 for a in areas), (kind, areas)  # present and small
    result = prepare(tmp_path, calib_fraction=0.1)
    samples = result.samples
    assert not result.problems
    assert {s.category for s in samples} == {"fine4_96"} and sum(s.split == "test" for s in samples) == 100


def _cron_block(after: str) -> str:
    """The first fenced block after the line containing `after` in examples/cron.md."""
    text = (Path(__file__).parents[1] / "examples" / "cron.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```") + rest[rest.index("```"):].index("\n") + 1
    return rest[start:start + rest[start:].index("```")]


def test_cron_md_pages_the_line_on_defects_and_on_images_that_need_a_look(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for who in ("notify-line-supervisor", "notify-it"):
        (bin_dir / who).write_text(f'#!/bin/sh\necho "{who} $*" >> {tmp_path}/pages\n')
        (bin_dir / who).chmod(0o755)
    script = tmp_path / "page.sh"
    script.write_text(_cron_block("`/opt/adcli/page.sh`").replace("/usr/local/bin/", f"{bin_dir}/"))
    paged = {}
    for code in range(7):
        (tmp_path / "pages").unlink(missing_ok=True)
        subprocess.run(["bash", str(script), "line3", str(code)], check=True)
        pages = (tmp_path / "pages").read_text() if (tmp_path / "pages").exists() else ""
        paged[code] = pages.split(" ", 1)[0] if pages else None
    assert paged == {0: None, 1: "notify-line-supervisor", 2: "notify-it", 3: "notify-line-supervisor",
                     4: "notify-it", 5: "notify-it", 6: "notify-it"}
    crontab = _cron_block("## crontab")
    assert "/opt/adcli/page.sh line3 $?" in crontab
    assert "page.sh" in _cron_block("adcli-line3.service`") and "page.sh" in _cron_block("watch-line3.sh` (executable)")


def test_cron_md_watch_wrapper_reads_the_exit_code_of_each_pass(tmp_path):
    wrapper = _cron_block("watch-line3.sh` (executable)")
    command = next(line for line in wrapper.splitlines() if "code=$(" in line)
    snippet = command.split("-c '", 1)[1].split("')", 1)[0]
    line = '{"counts": {"DEFECT": 0, "UNKNOWN_CATEGORY": 1}, "exit_code": 3, "watching": true}'
    done = subprocess.run([sys.executable, "-c", snippet], input=line, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "3"


@pytest.fixture(scope="module")
def knn_run(prepared, mobilenet_weights, tmp_path_factory):
    from adcli.commands.calibrate import calibrate
    from adcli.commands.train import train
    from tests.conftest import recipe_with_weights

    run = train(prepared, tmp_path_factory.mktemp("routing") / "run", recipe_with_weights("knn", mobilenet_weights),
                device="cpu")
    calibrate(run, prepared, 0.2, device="cpu")
    return run


def _routing_check(run, prepared, monkeypatch, capsys) -> tuple[int, str]:
    import runpy

    script = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "routing_check.py"), run_name="routing_check")
    monkeypatch.setattr(sys, "argv", ["routing_check.py", str(run), str(prepared)])
    try:
        script["main"]()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().out


def test_routing_check_passes_when_routing_costs_no_defect_its_verdict(knn_run, prepared, monkeypatch, capsys):
    code, out = _routing_check(knn_run, prepared, monkeypatch, capsys)
    assert code == 0, out
    assert "| DEFECT (auto) |" in out and "| disc | dark blob |" in out


def test_routing_check_exits_1_when_routing_costs_a_defect_its_verdict(knn_run, prepared, tmp_path, monkeypatch, capsys):
    import shutil

    from adcli.commands.calibrate import calibrate
    from adcli.model.routing import CategoryRouter, Route

    run = tmp_path / "run"
    shutil.copytree(knn_run, run)
    calibrate(run, thresholds={"disc": 1e9, "weave": -1e9}, device="cpu")  # nothing is a disc defect, every weave is
    # A router that sends every image to disc: each weave defect would end OK there.
    monkeypatch.setattr(CategoryRouter, "nearest_views", lambda self, views: [Route("disc", 0.0, True)] * len(views))
    code, out = _routing_check(run, prepared, monkeypatch, capsys)
    assert code == 1 and "routing cost" in out and "weave defect" in out, out
