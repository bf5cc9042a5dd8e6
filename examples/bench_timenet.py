"""Benchmark TimeNet inference: milliseconds per image for each part of one prediction.

    python examples/bench_timenet.py runs/tn                   # a trained bundle
    python examples/bench_timenet.py runs/tn --device cuda --batch 8

Random inputs at the bundle's size; prints one line per figure (median of --repeats runs).
"""

import argparse
import statistics
import time

import torch

from adcli.bundle.model_bundle import Bundle
from adcli.core.device import resolve_device


def _median_ms(fn, dev, repeats: int, per: int) -> float:
    times = []
    for i in range(repeats + 2):  # two warm-up runs
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000 / per)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    model, meta = Bundle(args.model).load_model(dev)
    if meta["method"] != "timenet":
        raise SystemExit(f"{args.model} is a {meta['method']} model, not timenet")
    size = meta["image_size"]
    x = torch.rand(args.batch, 3, size, size, device=dev)
    y = torch.zeros(args.batch, dtype=torch.long, device=dev)
    t = torch.full((args.batch,), model.config.inference.t * 999, device=dev)
    b = args.batch
    print(f"timenet {args.model}: {size} px, batch {b}, device {dev}, threads {torch.get_num_threads()}")
    print(f"flow (no TPN features): {_median_ms(lambda: model.denoiser(x, t, y), dev, args.repeats, b):.1f} ms/image")
    if model.tpn is not None:
        _, maps = model.tpn(x, y)
        print(f"TPN: {_median_ms(lambda: model.tpn(x, y), dev, args.repeats, b):.1f} ms/image")
        print(f"flow with TPN features: {_median_ms(lambda: model.denoiser(x, t, y, emb_maps=maps), dev, args.repeats, b):.1f} ms/image")
    print(f"scoring (backbone x2, maps): {_median_ms(lambda: model.anomaly_maps(x, x), dev, args.repeats, b):.1f} ms/image")
    print(f"predict (all of it): {_median_ms(lambda: model.predict(x, y), dev, args.repeats, b):.1f} ms/image")


if __name__ == "__main__":
    main()
