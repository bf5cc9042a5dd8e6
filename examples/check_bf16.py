"""Does bf16 autocast keep a model's results? Scores a prepared split in fp32 and in bf16 and compares.

    python examples/check_bf16.py runs/knn prepared/ [--split test] [--batch-size 8] [--threads 2]

Prints, per category: image AUROC in fp32 and bf16 and their difference, the Spearman rank correlation
of the two score lists, and ms/image of each. bf16 "keeps results" when every category's image AUROC
moves by at most 0.002 and every rank correlation exceeds 0.999 (issue #16's bar); exit 0 then, else 1.
Speed comes from `adcli bench RUN --dtype fp32,bf16` (this script times whole batches, decoding aside).
"""

import time

import numpy as np
from scipy.stats import spearmanr

from adcli.data.batches import resized
from adcli.inference.detector import Detector
from adcli.core.io import read_image
from adcli.stats.metrics import curve_summary
from split_args import model_and_split

AUROC_TOLERANCE, RANK_CORRELATION = 0.002, 0.999


def score_all(detector: Detector, pixels: np.ndarray, categories: list[str], bf16: bool, batch: int):
    detector.bf16 = bf16  # whatever the recipe's inference.cpu_dtype chose: this script compares both
    scores, start = [], time.perf_counter()
    for i in range(0, len(pixels), batch):
        scores.append(detector.score_pixels(pixels[i:i + batch], categories[i:i + batch])[0])
    return np.concatenate(scores), (time.perf_counter() - start) * 1e3 / len(pixels)


def main() -> None:
    args, detector, samples = model_and_split(__doc__.splitlines()[0])
    pixels = np.stack([resized(read_image(s.path), detector.image_size) for s in samples])
    categories = [s.category for s in samples]
    labels = np.array([s.label for s in samples])
    fp32, fp32_ms = score_all(detector, pixels, categories, False, args.batch_size)
    bf16, bf16_ms = score_all(detector, pixels, categories, True, args.batch_size)
    print(f"{args.run}: {detector.meta['method']}, {len(samples)} {args.split} images; ms/image fp32 {fp32_ms:.1f}, "
          f"bf16 {bf16_ms:.1f}")
    print(f"{'category':<16} {'AUROC fp32':>10} {'AUROC bf16':>10} {'diff':>8} {'Spearman':>9}")
    keeps = True
    for category in sorted(set(categories)):
        rows = np.array([c == category for c in categories])
        a = curve_summary(fp32[rows], labels[rows]).auroc
        b = curve_summary(bf16[rows], labels[rows]).auroc
        rho = float(spearmanr(fp32[rows], bf16[rows]).statistic)
        keeps &= abs(a - b) <= AUROC_TOLERANCE and rho > RANK_CORRELATION
        print(f"{category:<16} {a:>10.4f} {b:>10.4f} {b - a:>+8.4f} {rho:>9.5f}")
    print(f"bf16 {'keeps' if keeps else 'does NOT keep'} results (|ΔAUROC| <= {AUROC_TOLERANCE}, Spearman > {RANK_CORRELATION})")
    raise SystemExit(0 if keeps else 1)


if __name__ == "__main__":
    main()
