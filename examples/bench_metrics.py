"""Time and peak memory of the pixel metrics on N random maps (default 1,000 × 256²).

    python examples/bench_metrics.py [--n 1000] [--size 256]
"""

import argparse
import resource
import time

import numpy as np

from adcli.stats.metrics import aupro, curve_summary, descending_order


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    masks = np.zeros((args.n, args.size, args.size), bool)
    for i in range(0, args.n, 2):  # half the images carry 1-3 rectangular defects
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, args.size - 40, 2)
            h, w = rng.integers(4, 40, 2)
            masks[i, y:y + h, x:x + w] = True
    maps = (rng.random(masks.shape, dtype=np.float32) + 0.7 * masks).astype(np.float32)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    order = descending_order(maps)  # shared by all pixel metrics, as adcli.stats.metrics.category_metrics does
    ts = time.perf_counter()
    s = curve_summary(maps, masks, order)
    t1 = time.perf_counter()
    pro = aupro(maps, masks, order=order)
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.n} maps of {args.size}x{args.size} ({maps.size / 1e6:.1f} M pixels; inputs {(maps.nbytes + masks.nbytes) / 2**30:.2f} GiB)")
    print(f"sort: {ts - t0:.1f} s; pixel AUROC/AP/F1-max: {t1 - ts:.1f} s (auroc {s.auroc:.4f}); "
          f"AUPRO: {t2 - t1:.1f} s (aupro {pro:.4f}); total {t2 - t0:.1f} s")
    print(f"peak RSS {peak:.2f} GiB, of which {peak - base:.2f} GiB above the inputs")


if __name__ == "__main__":
    main()
