"""`adcli bench`: how fast a trained model scores on this machine, measured against the machine's own limit.

For each setting (batch size × dtype) it reports forward FLOPs per image (counted by
torch.utils.flop_counter: matrix products and convolutions, the work that dominates), the median
time per image after warm-up, images/s, peak resident memory, achieved GFLOP/s, and the ratio to the
peak of a large matrix product in the same dtype measured in the same run. A benchmark, not a test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from adcli.errors import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclasses.dataclass
class BenchRow:
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


def count_flops(model, images: torch.Tensor, category_ids: torch.Tensor, dtype: str) -> float:
    """Forward FLOPs of one predict call, per image."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), autocast(dtype, images.device), counter:
        model.predict(images, category_ids)
    return counter.get_total_flops() / images.shape[0]


def bench_model(model, categories: list[str], image_size: int, device: torch.device, batches: list[int],
                dtypes: list[str], threads: int, images: int, warmup: int = 1) -> list[BenchRow]:
    """Time `model.predict` on random images (cost does not depend on content) for every batch × dtype."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for dtype in dtypes:
        peak = matmul_peak_gflops(dtype, device)
        for batch in batches:
            x = torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)
            ids = (torch.arange(batch) % max(1, len(categories))).to(device)
            flops = count_flops(model, x, ids, dtype)
            _reset_peak_rss()
            calls = max(1, -(-images // batch))
            seconds = []
            with torch.inference_mode(), autocast(dtype, device):
                for i in range(warmup + calls):
                    _sync(device)
                    start = time.perf_counter()
                    model.predict(x, ids)
                    _sync(device)
                    if i >= warmup:
                        seconds.append(time.perf_counter() - start)
            per_image = statistics.median(seconds) / batch
            achieved = flops / per_image / 1e9
            rows.append(BenchRow(batch, dtype, threads, round(flops / 1e9, 3), round(1000 * per_image, 2),
                                 round(1 / per_image, 1), round(_peak_rss_mb(), 1), round(achieved, 1),
                                 round(peak, 1), round(achieved / peak, 3)))
    return rows


def bench(run: str | Path, batches: list[int], dtypes: list[str], threads: int | None = None, images: int = 32,
          device: str = "cpu") -> tuple[list[BenchRow], dict]:
    """Load a run folder and bench it. -> (rows, facts about the model and machine)."""
    from adcli.run import RunFolder
    from adcli.runtime import resolve_device

    if images < 1:
        raise UsageError("--images must be >= 1")
    dev = resolve_device(device)
    folder = RunFolder(run)
    model, meta = folder.load_model(dev)
    config = folder.read_config()
    threads = threads or torch.get_num_threads()
    rows = bench_model(model, meta["categories"], config.data.image_size, dev, batches, dtypes, threads, images)
    facts = {"run": str(run), "method": config.method, "profile": folder.profile(), "image_size": config.data.image_size,
             "device": str(dev), "threads": threads, "torch": torch.__version__,
             "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return rows, facts
