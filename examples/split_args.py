"""What the examples that score a prepared split share: their command line and the model + samples it names."""

import argparse

import torch

from adcli.data.manifest import Sample, load_manifest
from adcli.inference.detector import Detector
from adcli.core.errors import AdcliError


def model_and_split(description: str) -> tuple[argparse.Namespace, Detector, list[Sample]]:
    """Parse `RUN PREPARED [--split test] [--batch-size 8] [--threads N]`; -> (args, CPU detector, the split's
    samples of the model's categories). Exits with one line when there are none."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("run")
    ap.add_argument("prepared")
    ap.add_argument("--split", default="test")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        detector = Detector.load(args.run, "cpu", args.batch_size)
        samples = [s for s in load_manifest(args.prepared) if s.split == args.split and s.category in detector.categories]
    except AdcliError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not samples:
        raise SystemExit(f"no {args.split} images of the model's categories ({', '.join(detector.categories)}) in {args.prepared}")
    return args, detector, samples
