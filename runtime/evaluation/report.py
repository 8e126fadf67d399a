"""The site acceptance report: one self-contained HTML page (``hipcad evaluate --report DIR``).

Written for the clinical lead who signs a site's validation off, to be read offline: the model
and its provenance, the dataset, the site's figures next to the paper's, ROC, calibration,
operating points, subgroups, how many radiographs were not assessed and why, the heatmap check,
and the misclassified radiographs as thumbnails with their heatmaps. Images are inlined as
``data:`` URIs, styles are inline, nothing is fetched.

Every number on the page is drawn from the ``report.json`` written beside it: the template asks
for a JSON Pointer (RFC 6901) into the report and the page carries it (``data-key``) with the
exact value (``data-value``), so a reader -- or a test -- can check each figure against the JSON.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.evaluate import FIGURES
from hipcad.runtime.evaluation.figures import bars_png, forest_png, reliability_png
from hipcad.runtime.evaluation.roc_plot import render_roc_png
from hipcad.runtime.evaluation.stats import roc_curve

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_CASES = 24  # misclassified radiographs shown as thumbnails
THUMB_WIDTH = 640
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def pointer(*parts) -> str:
    """A JSON Pointer from path parts (``~`` and ``/`` escaped)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(doc, ptr: str):
    """The value at a JSON Pointer (KeyError / IndexError when it is not there)."""
    node = doc
    for raw in ptr.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def fmt(value, how: str) -> str:
    """How a number is written on the page: ``3`` (3 decimals), ``pct`` (percent, 1 decimal),
    ``int``, ``g`` (shortest), ``p`` (p-value, 3 significant digits), ``str``."""
    if value is None:
        return "n/a"
    if how == "str" or isinstance(value, str):
        return str(value)
    if how == "pct":
        return f"{value * 100:.1f} %"
    if how == "int":
        return str(int(value))
    if how == "p":
        return f"{value:.3g}"
    if how == "g":
        return f"{value:.4g}"
    return f"{value:.3f}"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def figures(report: dict, rows: list[dict]) -> dict[str, str]:
    """The report's pictures as data: URIs."""
    y = np.array([r["truth"] for r in rows])
    p = np.array([r["probability"] for r in rows])
    fpr, tpr, _ = roc_curve(y, p)
    points = [(1 - op["specificity"]["value"], op["sensitivity"]["value"], name)
              for name, op in report["operating_points"].items()
              if op["specificity"]["value"] is not None and op["sensitivity"]["value"] is not None]
    out = {"roc": render_roc_png(fpr, tpr, report["auc"]["value"], None, auc_ci=report["auc"]["ci95"],
                                 title="ROC of this site's halves", points=points, size=560)}
    paper = report["paper"]
    rows_fp = []
    for key in FIGURES:
        rows_fp.append((f"{key} - this site", report[key]["value"], *report[key]["ci95"]))
        rows_fp.append((f"{key} - paper", paper[key]["value"], *paper[key]["ci95"], (130, 130, 130)))
    lowest = min([v for r in rows_fp for v in r[1:4] if v is not None] + [0.8])
    out["versus_paper"] = forest_png(rows_fp, "This site and the paper (95 % CIs)", lo=max(0.0, np.floor(lowest * 10) / 10))
    out["reliability"] = reliability_png(report["calibration"]["reliability"],
                                         "Reliability of the " + ("probabilities" if report["calibration"]["calibrated"]
                                                                  else "scores (uncalibrated)"))
    for column, entry in report["subgroups"]["attributes"].items():
        if "strata" not in entry:
            continue
        rows_sg = [(s["value"], s["sensitivity"]["value"], *s["sensitivity"]["ci95"]) for s in entry["strata"]]
        out[f"subgroup:{column}"] = forest_png(rows_sg, f"Sensitivity by {column}", reference=report["sensitivity"]["value"],
                                               reference_label="all")
    reasons = report["eligibility"]["by_reason"]
    if reasons:
        out["eligibility"] = bars_png(list(reasons.items()), "Radiographs not assessed, by reason")
    return {k: _data_uri(v, "image/png") for k, v in out.items()}


def misclassified_cases(report: dict, dataset, pipeline, limit: int = MAX_CASES) -> list[dict]:
    """Overlay thumbnails (radiograph + heatmap + verdicts) of the misclassified radiographs, each
    with the indices of its entries in ``report["misclassified"]``."""
    from PIL import Image

    by_file: dict[str, list[int]] = {}
    for i, m in enumerate(report["misclassified"]):
        by_file.setdefault(m["file"], []).append(i)
    cases = []
    with tempfile.TemporaryDirectory(prefix="hipcad-report-") as tmp:
        for n, (file, entries) in enumerate(list(by_file.items())[:limit]):
            overlay = Path(tmp) / f"{n}.jpg"
            result = pipeline.run(dataset.by_file(file).path, overlay)
            uri = None
            if result.ok and overlay.is_file():
                with Image.open(overlay) as img:
                    img = img.convert("RGB")
                    img.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 2))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=82)
                uri = _data_uri(buf.getvalue(), "image/jpeg")
            cases.append({"file": file, "entries": entries, "image": uri})
    return cases


def render_html(report: dict, images: dict[str, str], cases: list[dict]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    def num(ptr: str, how: str = "3") -> Markup:
        value = resolve(report, ptr)
        shown = html.escape(fmt(value, how))
        raw = "null" if value is None else html.escape(json.dumps(value), quote=True)
        return Markup(f'<span class="num" data-key="{html.escape(ptr, quote=True)}" data-value="{raw}">{shown}</span>')

    def ci(ptr: str, how: str = "3") -> Markup:
        lo, hi = resolve(report, ptr + "/ci95")
        if lo is None or hi is None:
            return Markup("")
        return Markup(f'<span class="ci">({num(ptr + "/ci95/0", how)}&ndash;{num(ptr + "/ci95/1", how)})</span>')

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.globals.update(num=num, ci=ci, ptr=pointer, val=lambda p: resolve(report, p))
    return env.get_template("report.html").render(
        r=report, figures=FIGURES, images=images, cases=cases, generated=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        shown_cases=sum(len(c["entries"]) for c in cases))


def print_pdf(html_path: Path, pdf_path: Path, timeout: float = 120.0) -> Path:
    """Print the page to PDF with a local chromium (headless); a clear error without one."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        raise HipcadError(f"--pdf needs chromium (looked for {', '.join(BROWSERS)}); report.html is written anyway")
    with tempfile.TemporaryDirectory(prefix="hipcad-pdf-") as profile:
        proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               f"--user-data-dir={profile}", "--no-pdf-header-footer",
                               f"--print-to-pdf={pdf_path}", html_path.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not pdf_path.is_file():
        raise HipcadError(f"{browser} could not print the report to PDF: {proc.stderr.strip()[-300:]}")
    return pdf_path


def write_report(out: Path, report: dict, rows: list[dict], dataset, pipeline, *, pdf: bool = False) -> list[Path]:
    """report.html (and report.json, optionally report.pdf) in ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    page = render_html(report, figures(report, rows), misclassified_cases(report, dataset, pipeline))
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write(json_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"), durable=False)
    atomic_write(html_path, page.encode("utf-8"), durable=False)
    written = [html_path, json_path]
    if pdf:
        written.append(print_pdf(html_path, out / "report.pdf"))
    return written
