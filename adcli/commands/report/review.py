"""`adcli review OUT`: one self-contained HTML page of an inspect output folder for the people on the
line: counts per category and verdict, each category's scores against its threshold, drift, and
every DEFECT, ERROR and UNKNOWN_CATEGORY row with its heatmap and reason (newest first). A row
without a heatmap (an ERROR, --heatmaps none) shows a thumbnail of its file where that can still be
decoded.

Reads OUT/results.jsonl (read-only: a running inspect may be appending) and OUT/summary.json;
writes OUT/review.html atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import stat
from pathlib import Path

import numpy as np

from adcli.core.errors import AdcliError, DataError
from adcli.core.io import atomic_write_text, read_image
from adcli.commands.inspect.intake import MAX_FILE_BYTES
from adcli.commands.inspect.journal import latest_by_path, read_journal
from adcli.commands.report.html import STYLE, histogram_plot

REVIEW_STYLE = ".case{max-width:520px}.case img{height:auto;max-width:100%}.case img.thumb{width:auto;max-height:160px}"
THUMBNAIL_PX = 160  # longer side of the picture of a row without a heatmap
THUMBNAIL_QUALITY = 80
MAX_CASES = 200  # pictures embedded; the rest are counted (a page of thousands of images does not open)
ATTENTION = ("DEFECT", "ERROR", "UNKNOWN_CATEGORY")
VERDICT_ORDER = ("OK", "DEFECT", "ERROR", "UNKNOWN_CATEGORY", "uncalibrated")


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _picture(out: Path, rel: str) -> str:
    path = out / rel if rel else None
    if path is None or not path.is_file():
        return ""
    mime = "image/png" if path.suffix.lower() == ".png" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def _thumbnail(path: str) -> str:
    """A small JPEG data URI of the image file at `path`, or "" when it is gone, is no regular file (a pipe
    would block), too large, or cannot be decoded (the row's reason says why)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FILE_BYTES:
            return ""
        image = read_image(path)
    except (AdcliError, OSError, ValueError):
        return ""
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _counts_table(rows: list[dict]) -> str:
    categories = sorted({r.get("category") or "—" for r in rows})
    verdicts = [v for v in VERDICT_ORDER if any(r.get("verdict") == v for r in rows)]
    out = ["<table><tr><th>category</th>" + "".join(f"<th>{v}</th>" for v in verdicts) + "<th>total</th></tr>"]
    for cat in categories:
        mine = [r for r in rows if (r.get("category") or "—") == cat]
        cells = "".join(f"<td>{sum(r.get('verdict') == v for r in mine)}</td>" for v in verdicts)
        out.append(f"<tr><td>{html.escape(cat)}</td>{cells}<td>{len(mine)}</td></tr>")
    cells = "".join(f"<td><b>{sum(r.get('verdict') == v for r in rows)}</b></td>" for v in verdicts)
    out.append(f"<tr><td><b>all</b></td>{cells}<td><b>{len(rows)}</b></td></tr></table>")
    return "\n".join(out)


def _category_section(cat: str, rows: list[dict], drift: dict | None) -> str:
    scored = [r for r in rows if _float(r.get("score")) is not None]
    out = [f"<h2>{html.escape(cat)}</h2>"]
    if scored:
        scores = np.array([_float(r["score"]) for r in scored])
        defect = np.array([r.get("verdict") == "DEFECT" for r in scored])
        thresholds = {_float(r.get("threshold")) for r in scored} - {None}
        threshold = max(thresholds) if len(thresholds) == 1 else None  # one threshold, or say it changed
        out.append(f"<img src='{histogram_plot(scores, defect, cat, threshold, names=('OK', 'DEFECT'))}'>")
        if len(thresholds) > 1:
            out.append("<p><small>The threshold changed during these rows (re-calibrated); "
                       f"values: {', '.join(f'{t:.5g}' for t in sorted(thresholds))}.</small></p>")
    if drift:
        z = drift.get("z")
        state = "<b style='color:#b00'>drift</b>" if drift.get("drift") else "no drift"
        out.append(f"<p>{state}: {drift.get('n', 0)} recent OK images" + (f", z = {z}" if z is not None else "")
                   + (f" ({html.escape(drift['note'])})" if drift.get("note") else "") + "</p>")
    return "\n".join(out)


def _self_checks(summary: dict) -> dict:
    """summary.json's per-category self-check figures (adcli/commands/synthetic_defects.py: summary_record); {} if none."""
    record = summary.get("self_check")
    categories = record.get("categories") if isinstance(record, dict) else None
    return categories if isinstance(categories, dict) else {}


def _self_check_line(cat: str, check: dict | None) -> str:
    """Whether the model passed its calibration self-check on `cat`: can it see defects at all?"""
    if not isinstance(check, dict):
        return "<p>self-check: not run (calibrated with --no-self-check, or by an older adcli)</p>"
    try:
        (fl, nl), (fs, ns) = check["large_found"], check["small_found"]
        figures = f"synthetic AUROC {float(check['auroc']):.2f}, large defects found {fl}/{nl}, small {fs}/{ns}"
        if check.get("real_found"):
            fr, nr = check["real_found"]
            figures += f"; labelled test defects found {int(fr)}/{int(nr)}"
    except (KeyError, TypeError, ValueError):
        return "<p>self-check: unreadable in summary.json</p>"
    if check.get("weak"):
        return (f"<p><b style='color:#b00'>self-check failed</b>: this model cannot reliably see defects on "
                f"{html.escape(cat)} ({figures}); OK verdicts here mean little</p>")
    return f"<p>self-check passed: {figures}</p>"


def _case(out: Path, row: dict) -> str:
    picture = _picture(out, row.get("heatmap", ""))
    what = [f"<b>{html.escape(row.get('verdict', ''))}</b>", html.escape(row.get("path", ""))]
    if row.get("category"):
        what.append(f"category {html.escape(row['category'])}")
    if row.get("score_normalised"):  # rows written before the shared scale have none
        what.append(f"score <b>{html.escape(str(row['score_normalised']))}</b> (0.5 = threshold; raw "
                    f"{html.escape(str(row['score']))}, threshold {html.escape(str(row.get('threshold', '')))})")
    elif row.get("score"):
        what.append(f"score {html.escape(str(row['score']))}" + (f" (threshold {html.escape(str(row['threshold']))})"
                                                                   if row.get("threshold") else ""))
    if row.get("error"):
        what.append(f"reason: {html.escape(row['error'])}")
    if picture:
        image = f"<img src='{picture}'><br>"
    elif thumb := _thumbnail(row.get("path", "")):
        image = f"<img class='thumb' src='{thumb}' alt='the file'><br><small>the file (no heatmap)</small><br>"
    else:
        image = ""
    return f"<div class='case'>{image}<small>{' · '.join(what)}</small></div>"


def render_review(out: str | Path) -> Path:
    """Write OUT/review.html for the inspect output folder OUT; returns its path."""
    out = Path(out)
    journal = out / "results.jsonl"
    if not out.is_dir():
        raise DataError(f"folder not found: {out}")
    if not journal.is_file():
        raise DataError(f"{out} is not an `adcli inspect` output folder (no results.jsonl); give the --out of an inspect run")
    rows = list(latest_by_path(read_journal(journal, repair=False).rows).values())
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}  # an inspect still running its first pass: the rows are what there is
    title = f"adcli inspection review: {out}"
    header = {k: summary[k] for k in ("folder", "model", "model_id", "finished") if k in summary}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}{REVIEW_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p>" + " · ".join(f"{html.escape(k)}: <b>{html.escape(str(v))}</b>" for k, v in header.items()) + "</p>",
             _counts_table(rows)]
    drift = summary.get("drift", {}) if isinstance(summary.get("drift"), dict) else {}
    checks = _self_checks(summary)
    for cat in sorted({r["category"] for r in rows if r.get("category")}):
        parts.append(_category_section(cat, [r for r in rows if r.get("category") == cat], drift.get(cat)))
        parts.append(_self_check_line(cat, checks.get(cat)))
    attention = [r for r in reversed(rows) if r.get("verdict") in ATTENTION]  # newest first
    parts.append(f"<h2>Needs a look: {len(attention)} DEFECT / ERROR / UNKNOWN_CATEGORY</h2>")
    parts.append("<p><small>score: normalised, the same scale on every model and product: 0.5 = the category's "
                 "threshold, higher = more anomalous (at or above 0.5: DEFECT); raw score and threshold in brackets. "
                 "Heatmaps: the image and its anomaly map side by side, the white outline where the map passes the "
                 "defect level.</small></p>")
    if not attention:
        parts.append("<p>None.</p>")
    if len(attention) > MAX_CASES:
        parts.append(f"<p>Showing the newest {MAX_CASES}; all {len(attention)} are in results.csv.</p>")
    parts += ["<div class='row'>", *(_case(out, r) for r in attention[:MAX_CASES]), "</div>"]
    parts.append("</body></html>")
    target = out / "review.html"
    atomic_write_text(target, "\n".join(parts))
    return target
