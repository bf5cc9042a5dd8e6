"""Benchmark DiffusionAD: seconds per training step and milliseconds per inspected image.

    python examples/bench_diffusionad.py --profile cpu --device cpu
    python examples/bench_diffusionad.py --device cuda            # the paper's settings

Random inputs at the recipe's size; prints one line per figure.
"""

import argparse
import time

import torch

from adcli.data.batches import TrainBatch
from adcli.model.recipe import load_recipe
from adcli.model.registry import get_method
from adcli.core.device import resolve_device, seeded


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--infer-batch", type=int, default=1)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    config = load_recipe("diffusionad", args.profile).config
    with seeded(0):
        model = get_method("diffusionad").method_cls(config, ["a"]).to(dev)
    s, b = config.data.image_size, config.train.batch_size
    g = torch.Generator(device=dev).manual_seed(0)
    batch = TrainBatch(torch.rand(b, 3, s, s, device=dev), (torch.rand(b, 1, s, s, device=dev) > 0.9).float(),
                       torch.zeros(b, dtype=torch.long, device=dev), torch.arange(b, device=dev) >= b // 2)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    times = []
    for i in range(args.steps + 1):  # the first step warms up
        _sync(dev)
        t0 = time.perf_counter()
        loss = model.training_losses(batch, g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"profile={args.profile or 'paper'} device={dev} size={s} params={n_params:.1f}M")
    print(f"train: {sum(times[1:]) / args.steps:.3f} s/step at batch {b} ({b * args.steps / sum(times[1:]):.1f} img/s)")
    if dev.type == "cuda":
        print(f"train peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    model.eval()
    x = torch.rand(args.infer_batch, 3, s, s, device=dev)
    model.predict(x)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        model.predict(x)
    _sync(dev)
    per_image = (time.perf_counter() - t0) / (args.steps * args.infer_batch) * 1e3
    print(f"infer: {per_image:.1f} ms/image at batch {args.infer_batch}")


if __name__ == "__main__":
    main()
