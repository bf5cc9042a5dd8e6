"""Image-level AUROC per category from `adcli inspect` results, with scikit-learn.

For folders inspected without `adcli prepare` (`adcli report` needs a prepared dataset). A row's
label comes from its path: a `good` folder is normal, any other folder under `test/` is defective
(MVTec layout).

    python examples/image_auroc.py inspect/bottle/results.csv inspect/metal_plate/results.csv
"""

import csv
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score


def main(paths: list[str]) -> None:
    print(f"{'category':<16}{'images':>8}{'defective':>11}{'image AUROC':>13}")
    for p in paths:
        with open(p, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["verdict"] != "ERROR"]
        labels = [0 if Path(r["path"]).parent.name == "good" else 1 for r in rows]
        scores = [float(r["score"]) for r in rows]
        print(f"{rows[0]['category']:<16}{len(rows):>8}{sum(labels):>11}{roc_auc_score(labels, scores):>13.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
