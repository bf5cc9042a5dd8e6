import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from adcli.stats import metrics as M


def _random_case(rng, n, ties=False):
    labels = rng.random(n) < 0.3
    scores = rng.normal(size=n) + labels
    if ties:
        scores = np.round(scores, 1)
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_ap_f1_match_sklearn(ties, monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(M, "CHUNK", 97)  # force many chunks, with tie groups across chunk borders
    for _ in range(5):
        scores, labels = _random_case(rng, 1000, ties)
        s = M.curve_summary(scores.astype(np.float64), labels)
        assert s.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert s.ap == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
        p, r, _ = precision_recall_curve(labels, scores)
        f1 = np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0))
        assert s.f1_max == pytest.approx(f1, abs=1e-9)


def test_metric_properties():
    rng = np.random.default_rng(1)
    scores, labels = _random_case(rng, 500)
    a = M.curve_summary(scores, labels)
    b = M.curve_summary(np.exp(3 * scores) + 7, labels)  # monotone rescaling
    assert (a.auroc, a.ap, a.f1_max) == pytest.approx((b.auroc, b.ap, b.f1_max), abs=1e-12)
    assert M.curve_summary(scores, ~labels).auroc == pytest.approx(1 - a.auroc, abs=1e-12)
    assert np.isnan(M.curve_summary(scores, np.zeros(500, bool)).auroc)


def brute_force_aupro(maps, masks, limit=0.3):
    """Obviously correct and slow: threshold at every distinct score, measure every region."""
    from scipy import ndimage

    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3)))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks
    points = [(0.0, 0.0)]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= t
        fpr = (above & normal).sum() / normal.sum()
        pro = np.mean([above[i][r].sum() / r.sum() for i, r in regions])
        points.append((fpr, pro))
    fprs, pros = np.array(points).T
    keep = fprs <= limit
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < limit and (~keep).any():
        j = np.flatnonzero(~keep)[0]
        y.append(pros[j - 1] + (limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1]) * (pros[j] - pros[j - 1]))
        x.append(limit)
    return np.trapezoid(y, x) / limit


def test_aupro_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(2)
    monkeypatch.setattr(M, "CHUNK", 50)
    for trial in range(4):
        masks = np.zeros((3, 12, 12), bool)
        masks[0, 1:4, 1:4] = True  # two regions in one image, one diagonal-touching pair (8-connected)
        masks[0, 6:10, 7:9] = True
        masks[1, 4, 4] = masks[1, 5, 5] = True
        maps = rng.random(masks.shape) + 0.5 * masks * rng.random()
        if trial % 2:
            maps = np.round(maps, 2)  # ties
        assert M.aupro(maps, masks) == pytest.approx(brute_force_aupro(maps, masks), abs=1e-6)


def test_aupro_hand_cases():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 2:5] = True
    masks[0, 6:8, 6:8] = True
    assert M.aupro(masks.astype(float), masks) == pytest.approx(1.0)  # perfect map
    assert M.aupro(1.0 - masks, masks) == pytest.approx(0.0)  # every defect pixel below every normal one
    rng = np.random.default_rng(3)
    maps = rng.random(masks.shape)
    assert M.aupro(maps, masks) == pytest.approx(M.aupro(maps**3 * 10, masks), abs=1e-12)


def test_category_metrics_has_all_seven():
    rng = np.random.default_rng(4)
    masks = np.zeros((4, 8, 8), bool)
    masks[2:, 3:5, 3:5] = True
    maps = rng.random(masks.shape) + masks
    out = M.category_metrics(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
    assert set(out) == set(M.METRIC_NAMES) and all(0 <= v <= 1 for v in out.values())


def test_defect_type_metrics_against_sklearn():
    from sklearn.metrics import roc_auc_score

    from adcli.stats.metrics import defect_type_metrics

    rng = np.random.default_rng(3)
    types = ["good"] * 6 + ["crack"] * 4 + ["hole"] * 5
    labels = np.array([t != "good" for t in types])
    scores = rng.random(15) + labels * np.array([0.0] * 6 + [0.8] * 4 + [0.1] * 5)
    maps = rng.random((15, 4, 4))
    masks = np.zeros((15, 4, 4), bool)
    masks[labels, :2, :2] = True
    maps[masks] += 0.5
    rows = defect_type_metrics(scores, labels, types, maps, masks)
    assert [r["defect_type"] for r in rows] == ["crack", "hole"] and [r["images"] for r in rows] == [4, 5]
    for r, sl in zip(rows, [slice(6, 10), slice(10, 15)]):
        pick = np.r_[np.arange(6), np.arange(15)[sl]]
        assert r["image_auroc"] == pytest.approx(roc_auc_score(labels[pick], scores[pick]))
        assert r["pixel_auroc"] == pytest.approx(roc_auc_score(masks[sl].ravel(), maps[sl].ravel()))
    no_maps = defect_type_metrics(scores, labels, types)
    assert all(np.isnan(r["pixel_auroc"]) for r in no_maps)
