"""One self-contained HTML file: metrics table, per-category ROC and score histograms, and a
gallery of the worst and best cases (image | heatmap | ground truth). Pictures are inline PNGs."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on shop-floor PCs or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from adcli.commands.inspect.heatmap import overlay  # noqa: E402
from adcli.stats.metrics import METRIC_NAMES  # noqa: E402

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}
.row{display:flex;gap:1em;flex-wrap:wrap}.case{margin:.5em 0}.case img{height:160px;margin-right:4px}
h2{border-bottom:2px solid #444;padding-bottom:.2em}small{color:#666}"""


def png_data_uri(fig_or_image) -> str:
    """A matplotlib figure (closed afterwards) or PIL image -> an inline `data:image/png` URI."""
    buf = io.BytesIO()
    if isinstance(fig_or_image, Image.Image):
        fig_or_image.save(buf, format="PNG")
    else:
        fig_or_image.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig_or_image)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def roc_plot(scores: np.ndarray, labels: np.ndarray, title: str) -> str:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    if labels.any() and (~labels).any():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, lw=2)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{title}: image ROC")
    return png_data_uri(fig)


def histogram_plot(scores: np.ndarray, labels: np.ndarray, title: str, threshold: float | None,
                   names: tuple[str, str] = ("good", "defective")) -> str:
    """labels: True for the second kind (`names`: what the two kinds are called in the legend)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    span = [scores.min(), scores.max()] + ([threshold] if threshold is not None else [])  # the threshold in view
    bins = np.linspace(min(span), max(span) + 1e-12, 30)
    ax.hist(scores[~labels], bins=bins, alpha=0.6, label=f"{names[0]} ({(~labels).sum()})", color="tab:green")
    ax.hist(scores[labels], bins=bins, alpha=0.6, label=f"{names[1]} ({labels.sum()})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=2, label="calibrated threshold")
    ax.set(xlabel="image score", ylabel="images", title=f"{title}: scores")
    ax.legend()
    return png_data_uri(fig)


def triptych(image: Image.Image, anomaly_map: np.ndarray, mask: np.ndarray, value_range) -> list[str]:
    shown = image.copy()
    shown.thumbnail((256, 256))
    heat = overlay(shown, anomaly_map, value_range)
    gt = Image.fromarray((mask * 255).astype(np.uint8)).resize(shown.size, Image.NEAREST)
    return [png_data_uri(shown), png_data_uri(heat), png_data_uri(gt)]


def render(title: str, header: dict, rows: list[dict], sections: list[dict]) -> str:
    """rows: per-category metric dicts (plus 'mean'); sections: per category plots and gallery cases."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    out.append("<p>" + " · ".join(f"{html.escape(k)}: <b>{html.escape(str(v))}</b>" for k, v in header.items()) + "</p>")
    out.append("<table><tr><th>category</th><th>images</th>" + "".join(f"<th>{m}</th>" for m in METRIC_NAMES) + "</tr>")
    for r in rows:
        cells = "".join(f"<td>{r[m] * 100:.1f}</td>" if r[m] == r[m] else "<td>–</td>" for m in METRIC_NAMES)
        out.append(f"<tr><td>{html.escape(r['category'])}</td><td>{r['images']}</td>{cells}</tr>")
    out.append("</table><p><small>Metrics in %. AUPRO: anomalib's definition (exact thresholds, FPR ≤ 0.3, "
               "8-connected regions). Evaluated at the model's resolution.</small></p>")
    calibrated = [r for r in rows if r.get("threshold") is not None]
    if calibrated:
        out.append("<h3>At the calibrated thresholds</h3><table><tr><th>category</th><th>threshold</th>"
                   "<th>target FPR</th><th>FPR 95% bound</th><th>false alarms on good</th><th>defects detected</th>"
                   "<th>self-check AUROC</th><th>synthetic large found</th></tr>")
        pct = lambda v: "–" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        for r in calibrated:
            out.append(f"<tr><td>{html.escape(r['category'])}</td><td>{r['threshold']:.5g}</td><td>{pct(r['target_fpr'])}</td>"
                       f"<td>{pct(r['fpr_upper_95'])}</td><td>{pct(r['observed_fpr'])}</td><td>{pct(r['detection_rate'])}</td>"
                       f"<td>{_auroc(r.get('self_check_auroc'), r.get('self_check_weak'))}</td><td>{pct(r.get('synthetic_large_found'))}</td></tr>")
        out.append("</table>")
    for sec in sections:
        out.append(f"<h2>{html.escape(sec['category'])}</h2><div class='row'>")
        out.append(f"<img src='{sec['roc']}'><img src='{sec['hist']}'></div>")
        for group, cases in sec["gallery"].items():
            if not cases:  # e.g. no defective images in this split: no heading over nothing
                continue
            out.append(f"<h3>{html.escape(group)}</h3>")
            for case in cases:
                imgs = "".join(f"<img src='{src}'>" for src in case["pictures"])
                out.append(f"<div class='case'>{imgs}<br><small>{html.escape(case['caption'])}</small></div>")
    out.append("<p><small>Columns: image | heatmap | ground truth.</small></p></body></html>")
    return "\n".join(out)


def _auroc(value: float | None, weak: bool | None) -> str:
    """A self-check AUROC (0-1) in % as the metrics tables show AUROCs, a weak self-check marked."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (" <b style='color:#b00'>weak</b>" if weak else "")
