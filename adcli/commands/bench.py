"""`adcli bench`: how fast a trained model scores on this machine, measured against the machine's own limit.

For each setting (batch size × dtype) it reports forward FLOPs per image (counted by
torch.utils.flop_counter: matrix products and convolutions, the work that dominates), the median
time per image after warm-up, images/s, peak resident memory, achieved GFLOP/s, and the ratio to the
peak of a large matrix product in the same dtype measured in the same run. A benchmark, not a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from adcli.core.errors import UsageError
from adcli.inference.export import calls
from adcli.core.device import place

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass
class BenchRow:
    backend: str
    batch: int
    dtype: str
    threads: int
    gflop_per_image: float
    ms_per_image: float
    images_per_s: float
    peak_rss_mb: float
    achieved_gflops: float
    matmul_peak_gflops: float
    fraction_of_peak: float


def parse_list(text: str, kind: str, allowed=None) -> list:
    """'1,4,8' -> [1, 4, 8]; 'fp32,bf16' -> ['fp32', 'bf16']; a clear error for anything else."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(f"--{kind}: give a comma-separated list, e.g. {'1,4,8' if allowed is None else ','.join(allowed)}")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise UsageError(f"--{kind}: unknown {', '.join(bad)} (choose from {', '.join(allowed)})")
        return items
    try:
        values = [int(t) for t in items]
    except ValueError:
        raise UsageError(f"--{kind}: expected whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise UsageError(f"--{kind}: every value must be >= 1")
    return values


def autocast(dtype: str, device: torch.device):
    """bf16: torch's autocast on the device; fp32: nothing."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def matmul_peak_gflops(dtype: str, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """The best GFLOP/s of a size×size matrix product in `dtype` over `repeats` tries (after one warm-up)."""
    a = torch.randn(size, size, device=device).to(DTYPES[dtype])
    b = torch.randn(size, size, device=device).to(DTYPES[dtype])
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_rss() -> bool:
    """Linux: reset the process's peak resident set size (VmHWM); False where the system does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB (peak of the whole run)


@register_flop_formula([torch.ops.aten._euclidean_dist, torch.ops.aten._cdist_forward])
def _cdist_flops(x1_shape, x2_shape, *args, **kwargs) -> int:
    """torch.cdist (knn's search) as the matrix product it is computed with; the counter has no formula for it."""
    batch = math.prod(x1_shape[:-2])
    return 2 * batch * x1_shape[-2] * x2_shape[-2] * x1_shape[-1]


def count_flops(model, images: torch.Tensor, category_ids: torch.Tensor, dtype: str, graph=None,
                by_category: bool = False) -> float:
    """Forward FLOPs of one scoring call, per image: of `model.predict`, or of `graph` (the model's
    `scoring_graph()`, which an exported backend runs: knn's searches the largest bank among a
    call's categories) in the calls an exported model makes (`by_category`: one per category)."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), autocast(dtype, images.device), counter:
        if graph is not None:
            for group in calls(category_ids.cpu().numpy(), by_category):
                index = torch.from_numpy(group).to(images.device)
                graph(images[index], category_ids[index])
        else:
            model.predict(images, category_ids)
    return counter.get_total_flops() / images.shape[0]


def bench_model(model, categories: list[str], image_size: int, device: torch.device, batches: list[int],
                dtypes: list[str], threads: int, images: int, warmup: int = 1,
                backends: dict | None = None) -> list[BenchRow]:
    """Time `predict` on random images (cost does not depend on content) for every backend × batch ×
    dtype. backends: name -> model with `predict` (default {"torch": model}; any other name: an
    adcli.inference.export.ExportedModel); FLOPs are counted on the torch model: its `predict` for torch rows,
    its export graph for exported ones (float32, so fp32 rows only)."""
    torch.set_num_threads(threads)
    backends = backends or {"torch": model}
    graph = model.scoring_graph() if any(name != "torch" for name in backends) else None  # built once
    generator = torch.Generator().manual_seed(0)
    rows = []
    for name, scorer in backends.items():
        for dtype in dtypes if name == "torch" else [d for d in dtypes if d == "fp32"]:
            for batch in batches:
                x = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
                ids = (torch.arange(batch) % max(1, len(categories))).to(device)
                exported = name != "torch"  # an ExportedModel, which declares how it batches categories
                flops = count_flops(model, x, ids, dtype, graph=graph if exported else None,
                                    by_category=exported and scorer.batch_by_category)
                _reset_peak_rss()
                calls = max(1, -(-images // batch))
                seconds = []
                with torch.inference_mode(), autocast(dtype if name == "torch" else "fp32", device):
                    for i in range(warmup + calls):
                        _sync(device)
                        start = time.perf_counter()
                        scorer.predict(x, ids)
                        _sync(device)
                        if i >= warmup:
                            seconds.append(time.perf_counter() - start)
                per_image = statistics.median(seconds) / batch
                achieved = flops / per_image / 1e9
                # measured next to each setting: a shared or throttled PC's speed drifts within a run
                peak = matmul_peak_gflops(dtype, device)
                rows.append(BenchRow(name, batch, dtype, threads, round(flops / 1e9, 3), round(1000 * per_image, 2),
                                     round(1 / per_image, 1), round(_peak_rss_mb(), 1), round(achieved, 1),
                                     round(peak, 1), round(achieved / peak, 3)))
    return rows


def untrained_model(recipe: str, profile: str | None, categories: int, train_images: int, device: torch.device):
    """A recipe's model with random weights, for timing a profile without training it (the cost of
    these networks does not depend on their weights). Data-sized state (knn's banks) is filled as
    `train_images` training images per category would fill it. -> (model, category names, config)."""
    from adcli.model.recipe import load_recipe
    from adcli.model.registry import build_method

    if categories < 1 or train_images < 1:
        raise UsageError("--categories and --train-images must be >= 1")
    loaded = load_recipe(recipe, profile)
    names = [f"category{i}" for i in range(categories)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_method(loaded.config, names, load_pretrained=False, source=str(loaded.path))
        model.fill_untrained(train_images)
    return place(model, device).eval().requires_grad_(False), names, loaded.config


def bench(run: str | Path | None, batches: list[int], dtypes: list[str], threads: int | None = None, images: int = 32,
          device: str = "cpu", backends: list[str] | None = None, recipe: str | None = None, profile: str | None = None,
          categories: int = 1, train_images: int = 200) -> tuple[list[BenchRow], dict]:
    """Load a run folder (or build a recipe's untrained model) and bench it. -> (rows, facts)."""
    from adcli.inference.export import BACKENDS, ExportedModel
    from adcli.bundle.model_bundle import Bundle
    from adcli.bundle.training_state import TrainingRun
    from adcli.core.device import resolve_device

    if images < 1:
        raise UsageError("--images must be >= 1")
    if (run is None) == (recipe is None):
        raise UsageError("give a run folder or --recipe (not both)")
    backends = backends or ["torch"]
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise UsageError(f"--backend: unknown {', '.join(bad)} (choose from {', '.join(BACKENDS)})")
    dev = resolve_device(device)
    if any(b != "torch" for b in backends) and (dev.type != "cpu" or run is None):
        raise UsageError("--backend onnx/openvino: the exported graph of a run folder, on the CPU")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if run is not None:
        folder = Bundle(run)
        model, meta = folder.load_model(dev)
        model.requires_grad_(False)  # the FLOP counter's module tracker trips over inputs that require grad (DiAD)
        config, names, profile = folder.read_config(), meta["categories"], TrainingRun(run).profile()
    else:
        model, names, config = untrained_model(recipe, profile, categories, train_images, dev)
    scorers = {b: model if b == "torch" else ExportedModel(folder, b, threads) for b in backends}
    rows = bench_model(model, names, config.data.image_size, dev, batches, dtypes, threads, images, backends=scorers)
    facts = {"run": str(run) if run is not None else f"recipe {recipe} (untrained)", "method": config.method,
             "profile": profile, "image_size": config.data.image_size, "categories": len(names),
             "device": str(dev), "threads": threads, "torch": torch.__version__,
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return rows, facts
