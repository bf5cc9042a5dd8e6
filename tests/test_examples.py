"""Example scripts that generate data: they run, and what they write is a dataset `adcli prepare` takes."""

import subprocess
import sys
from pathlib import Path

import numpy as np
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
