"""Anomaly-detection metrics with exact thresholds (anomalib's definitions; METHODS.md protocol).

Every curve is walked once over the scores sorted from high to low, in chunks, taking one point per
distinct score: memory stays at a few bytes per pixel and nothing is binned.

    image/pixel AUROC   area under (FPR, TPR), trapezoid, from (0, 0)
    image/pixel AP      Σ (R_k − R_{k−1}) · P_k  (scikit-learn's average_precision_score)
    image/pixel F1-max  max_k 2·P_k·R_k / (P_k + R_k)
    AUPRO               ∫₀^0.3 PRO d(FPR) / 0.3, PRO = mean over 8-connected defect regions of the
                        fraction of the region above threshold, FPR over all normal pixels of the category
"""

from __future__ import annotations

import dataclasses

import numpy as np

CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class CurveSummary:
    auroc: float
    ap: float
    f1_max: float


def _group_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Indices of the last element of each run of equal values in a descending-sorted array."""
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1])
    return np.append(ends, len(sorted_scores) - 1)


def _descending(scores: np.ndarray) -> np.ndarray:
    return np.argsort(-scores.ravel(), kind="stable")


def descending_order(scores: np.ndarray) -> np.ndarray:
    """Indices that sort the flattened scores from high to low (int32 where it fits: 4 bytes a pixel)."""
    scores = np.asarray(scores).ravel()
    return _descending(scores).astype(np.int32 if scores.size < 2**31 else np.int64)


def curve_summary(scores: np.ndarray, labels: np.ndarray, order: np.ndarray | None = None) -> CurveSummary:
    """AUROC, AP and F1-max of scores (any shape) against binary labels (same shape).
    `order` (from descending_order) saves a sort when several metrics share the scores."""
    scores = np.asarray(scores, dtype=np.float64 if np.asarray(scores).dtype == np.float64 else np.float32).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return CurveSummary(float("nan"), float("nan"), float("nan"))
    order = descending_order(scores) if order is None else order
    sorted_scores = scores[order]
    ends = _group_ends(sorted_scores)
    del sorted_scores
    tp_prev = fp_prev = 0
    auc2 = 0.0  # twice the ROC area, in counts (tp·fp units)
    ap = 0.0
    f1_max = 0.0
    cum_pos = 0
    for lo in range(0, len(order), CHUNK):
        hi = min(lo + CHUNK, len(order))
        pos = labels[order[lo:hi]].astype(np.int64)
        cum = cum_pos + np.cumsum(pos)  # positives among the first i+1 sorted elements
        cum_pos = int(cum[-1])
        e = ends[(ends >= lo) & (ends < hi)]
        if e.size == 0:
            continue
        tp = cum[e - lo]
        fp = e + 1 - tp
        tp_all = np.concatenate([[tp_prev], tp]).astype(np.float64)
        fp_all = np.concatenate([[fp_prev], fp]).astype(np.float64)
        auc2 += float(np.sum(np.diff(fp_all) * (tp_all[1:] + tp_all[:-1])))
        precision = tp / (tp + fp)
        ap += float(np.sum(np.diff(tp_all) / n_pos * precision))
        f1_max = max(f1_max, float(np.max(2 * tp / (tp + fp + n_pos))))
        tp_prev, fp_prev = int(tp[-1]), int(fp[-1])
    return CurveSummary(auc2 / (2.0 * n_pos * n_neg), ap, f1_max)


def connected_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labelling of a binary mask (H, W) -> (labels with 0 = background, count)."""
    from scipy import ndimage

    labelled, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    return labelled, int(count)


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = 0.3, order: np.ndarray | None = None) -> float:
    """AUPRO of anomaly maps (N, H, W) against binary masks (N, H, W), normalised by fpr_limit.

    Each defect pixel carries weight 1 / (R · |its region|), so the running sum of weights above a
    threshold is exactly the PRO (mean per-region overlap) at that threshold. Memory: about 4 bytes
    of weight, 4-8 of sort order and 1 of mask per pixel beside the maps.
    """
    masks = np.asarray(masks).astype(bool)
    # 1/|region| on each defect pixel (float32: 4 bytes a pixel); divided by the region count R below.
    inv_size = np.zeros(masks.shape, dtype=np.float32)
    n_regions = 0
    for i in range(masks.shape[0]):
        lab, count = connected_regions(masks[i])
        if count:
            sizes = np.bincount(lab.ravel()).astype(np.float64)
            inv_size[i] = np.where(lab > 0, 1.0 / sizes[lab], 0.0)
            n_regions += count
    if n_regions == 0:
        return float("nan")
    n_normal = int((~masks).sum())
    if n_normal == 0:
        return float("nan")
    flat_w = inv_size.ravel()
    flat_normal = ~masks.ravel()
    scores = np.asarray(maps).ravel()
    order = descending_order(scores) if order is None else order
    ends = _group_ends(scores[order])
    fpr_prev, pro_prev = 0.0, 0.0
    area = 0.0
    cum_w, cum_fp = 0.0, 0
    for lo in range(0, len(order), CHUNK):
        hi = min(lo + CHUNK, len(order))
        idx = order[lo:hi]
        cw = cum_w + np.cumsum(flat_w[idx], dtype=np.float64) / n_regions
        cf = cum_fp + np.cumsum(flat_normal[idx].astype(np.int64))
        cum_w, cum_fp = float(cw[-1]), int(cf[-1])
        e = ends[(ends >= lo) & (ends < hi)] - lo
        if e.size == 0:
            continue
        fpr = np.concatenate([[fpr_prev], cf[e] / n_normal])
        pro = np.concatenate([[pro_prev], cw[e]])
        over = np.flatnonzero(fpr > fpr_limit)
        if over.size:
            k = over[0]  # first point past the limit: interpolate exactly at fpr_limit and stop
            t = (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
            fpr = np.append(fpr[:k], fpr_limit)
            pro = np.append(pro[:k], pro[k - 1] + t * (pro[k] - pro[k - 1]))
            area += float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2))
            return area / fpr_limit
        area += float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2))
        fpr_prev, pro_prev = float(fpr[-1]), float(pro[-1])
    return area / fpr_limit  # the curve ended (all pixels flagged) before reaching the limit


METRIC_NAMES = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")


def category_metrics(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray | None = None,
                     masks: np.ndarray | None = None) -> dict[str, float]:
    """All seven metrics for one category. scores/labels (N,); maps/masks (N, H, W) or None (pixel metrics NaN)."""
    image = curve_summary(scores, labels)
    out = {"image_auroc": image.auroc, "image_ap": image.ap, "image_f1_max": image.f1_max}
    if maps is None or masks is None:
        out.update(pixel_auroc=float("nan"), pixel_ap=float("nan"), pixel_f1_max=float("nan"), aupro=float("nan"))
        return out
    order = descending_order(maps)  # one sort of all pixels serves the three curves and AUPRO
    pixel = curve_summary(maps, masks, order)
    out.update(pixel_auroc=pixel.auroc, pixel_ap=pixel.ap, pixel_f1_max=pixel.f1_max, aupro=aupro(maps, masks, order=order))
    return out


def defect_type_metrics(scores: np.ndarray, labels: np.ndarray, types: list[str], maps: np.ndarray | None = None,
                        masks: np.ndarray | None = None, known: np.ndarray | None = None) -> list[dict]:
    """Per defect type of one category: how well its images stand out from the category's good images.

    image_auroc: that type's images against every good image; pixel_auroc: defect vs normal pixels over
    that type's images whose mask is known (`known`, default all). scores/labels (N,), types N names
    ("good" for good images), maps/masks (N, H, W) or None. -> one dict per type, sorted by name."""
    labels = np.asarray(labels).astype(bool)
    known = np.ones(len(labels), bool) if known is None else np.asarray(known, bool)
    good = ~labels
    rows = []
    for name in sorted({t for t, is_defect in zip(types, labels) if is_defect}):
        mine = np.array([t == name for t in types]) & labels
        pick = mine | good
        row = {"defect_type": name, "images": int(mine.sum()),
               "image_auroc": curve_summary(scores[pick], labels[pick]).auroc if good.any() else float("nan"),
               "pixel_auroc": float("nan")}
        with_mask = mine & known
        if maps is not None and masks is not None and with_mask.any() and masks[with_mask].any() and not masks[with_mask].all():
            row["pixel_auroc"] = curve_summary(maps[with_mask], masks[with_mask]).auroc
        rows.append(row)
    return rows
