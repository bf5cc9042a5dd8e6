"""adcli bench runs and counts what it says; its figures are for reading, not for asserting speed."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from adcli.commands.bench import bench_model, count_flops, parse_list
from adcli.cli import app
from adcli.core.errors import UsageError
from adcli.commands.train import train
from conftest import recipe_with_weights


class OneLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 4 * 4, 5)

    def predict(self, images, category_ids):
        return self.fc(images.flatten(1))


def test_flops_are_counted_not_estimated():
    x = torch.rand(3, 3, 4, 4)
    assert count_flops(OneLinear(), x, torch.zeros(3, dtype=torch.long), "fp32") == 2 * 48 * 5
    rows = bench_model(OneLinear(), ["a"], 4, torch.device("cpu"), [1, 2], ["fp32", "bf16"], threads=1, images=2)
    assert [(r.batch, r.dtype) for r in rows] == [(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    assert all(r.ms_per_image > 0 and r.matmul_peak_gflops > 0 and r.peak_rss_mb > 0 for r in rows)


class NearestNeighbour(torch.nn.Module):
    def predict(self, images, category_ids):
        return torch.cdist(images.flatten(1), torch.ones(7, 48)).amin(dim=1)


def test_nearest_neighbour_search_is_counted_as_its_matrix_product():
    x = torch.rand(3, 3, 4, 4)
    assert count_flops(NearestNeighbour(), x, torch.zeros(3, dtype=torch.long), "fp32") == 2 * 7 * 48


class GraphCostingItsLargestCategory(torch.nn.Module):
    """A scoring graph whose work grows with the largest category id in a call, as knn's banks."""

    def forward(self, images, category_ids):
        return images.flatten(1) @ torch.ones(48, 1 + int(category_ids.max()))


def test_exported_flops_are_counted_in_the_calls_an_exported_model_makes():
    x, ids = torch.rand(4, 3, 4, 4), torch.tensor([0, 1, 0, 1])
    graph = GraphCostingItsLargestCategory()
    # one call per category: 2 images × 48 × 1 column, then 2 × 48 × 2; per image (192 + 384) / 4
    assert count_flops(graph, x, ids, "fp32", graph=graph, by_category=True) == 2 * (2 * 48 * 1 + 2 * 48 * 2) / 4
    # one call (an export made before knn split its calls): every image pays for the largest category
    assert count_flops(graph, x, ids, "fp32", graph=graph, by_category=False) == 2 * 48 * 2


def test_lists_are_checked():
    assert parse_list("1, 4,8", "batch") == [1, 4, 8]
    with pytest.raises(UsageError, match="whole numbers"):
        parse_list("1,x", "batch")
    with pytest.raises(UsageError, match="unknown fp16"):
        parse_list("fp16", "dtype", ["fp32", "bf16"])


def test_bench_command_on_a_bundle(prepared, mobilenet_weights, tmp_path):
    run = train(prepared, tmp_path / "run", recipe_with_weights("knn", mobilenet_weights), device="cpu")
    result = CliRunner().invoke(app, ["bench", str(run), "--batch", "1,2", "--images", "2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "knn" and len(out["rows"]) == 2 and out["rows"][0]["gflop_per_image"] > 0
    table = CliRunner().invoke(app, ["bench", str(run), "--batch", "2", "--images", "2"])
    assert table.exit_code == 0 and "ms/img" in table.output
    bad = subprocess.run([sys.executable, "-m", "adcli", "bench", str(run), "--dtype", "fp8"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown fp8 (choose from fp32, bf16)" in bad.stderr


def test_bench_times_an_untrained_recipe():
    """`--recipe`: DiAD's untrained model (its cross-attention input is a parameter, which the FLOP
    counter's module tracker could not take while it required grad) and knn with banks sized from
    --train-images."""
    from adcli.commands.bench import bench

    rows, facts = bench(None, [2], ["fp32"], threads=1, images=2, recipe="diad", profile="test")
    assert facts["method"] == "diad" and rows[0].gflop_per_image > 0 and "untrained" in facts["run"]
    rows, _ = bench(None, [1], ["fp32"], threads=1, images=1, recipe="knn", profile="test", categories=2, train_images=4)
    assert rows[0].gflop_per_image > 0
    with pytest.raises(UsageError, match="not both"):
        bench("somewhere", [1], ["fp32"], recipe="knn")
