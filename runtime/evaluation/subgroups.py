"""Figures per subgroup: every attribute column of a dataset's labels.csv is a stratification.

An attribute describes either the **image** (``vendor``, ``sex``, ``age_band``, ``view``: both
halves of a radiograph take its value) or the **fracture** (``fracture_type``, ``displaced``: only
fractured halves have it); :func:`hipcad.runtime.evaluation.dataset.attribute_levels` tells which.

* image attribute: each value's halves get every figure of :func:`.stats.binary_metrics`
  (accuracy, sensitivity, specificity, F1, AUC with their intervals); the values are compared on
  sensitivity and specificity (Fisher's exact test for two values, chi-square for more) and on
  the AUC (Wald chi-square on DeLong's variances, independent groups);
* fracture attribute: each value's fractured halves get their sensitivity (Wald interval) and
  the AUC of those fractures against *all* intact halves (DeLong interval) -- specificity belongs
  to no fracture type; the values are compared on sensitivity (as above) and on the AUC (Wald
  chi-square with DeLong's covariance for groups that share their negatives).

Halves whose value is not given form a stratum ``(not given)`` that is shown but not tested. An
attribute with more than :data:`MAX_VALUES` values is skipped (bin it first, e.g. age into
bands). The p-values of all tests of one evaluation are also given Holm-adjusted, since many
are run at once. Halves of one radiograph are counted as independent cases, as in the pooled
figures.
"""

from __future__ import annotations

import numpy as np

from hipcad.runtime.evaluation.group_tests import auc_test, holm, proportions_test
from hipcad.runtime.evaluation.stats import binary_metrics

MAX_VALUES = 12
NOT_GIVEN = "(not given)"
SMALL = 10  # strata with fewer cases than this are marked: their intervals are wide
DEFINITION = (
    "an image attribute splits all hips by the value of their radiograph; every figure is given per value, and the values "
    "are compared on sensitivity and specificity (Fisher's exact test for two values, Pearson's chi-square for more) and "
    "on the AUC (Wald chi-square on DeLong's variances). A fracture attribute splits the fractured hips; per value, the "
    "sensitivity and the AUC of those fractures against all intact hips, compared on sensitivity (as above) and on the "
    "AUC (Wald chi-square with DeLong's covariance, the groups sharing their negatives). Where a group's AUC is 0 or 1 "
    "(no DeLong variance) a class-stratified permutation test compares the AUCs. Hips whose value is not given are shown "
    "but not tested. p-values are also given Holm-adjusted over all the tests of the evaluation.")


def _strata(rows: list[dict], column: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["attributes"].get(column) or NOT_GIVEN, []).append(row)
    given = sorted((v for v in out if v != NOT_GIVEN), key=lambda v: (-len(out[v]), v))
    return {v: out[v] for v in given + ([NOT_GIVEN] if NOT_GIVEN in out else [])}


def _arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r["truth"] for r in rows], dtype=np.int8), np.array([r["probability"] for r in rows])


def _image_attribute(rows, column, threshold, ci_method, n_bootstrap, seed) -> dict:
    strata = _strata(rows, column)
    table, sens, spec, aucs = [], [], [], []
    for value, members in strata.items():
        y, p = _arrays(members)
        m = binary_metrics(y, p, threshold, n_bootstrap=n_bootstrap, seed=seed, ci_method=ci_method)
        table.append({"value": value, "small": len(members) < SMALL,
                      **{k: m[k] for k in ("n", "positives", "negatives", "confusion",
                                           "accuracy", "sensitivity", "specificity", "f1", "auc")}})
        if value != NOT_GIVEN:
            c = m["confusion"]
            sens.append((c["tp"], c["tp"] + c["fn"]))
            spec.append((c["tn"], c["tn"] + c["fp"]))
            aucs.append((p[y == 1], p[y == 0]))
    tests = {"sensitivity": proportions_test(*zip(*sens)) if sens else None,
             "specificity": proportions_test(*zip(*spec)) if spec else None,
             "auc": auc_test(aucs, shared_negatives=False)}
    return {"level": "image", "strata": table, "tests": tests,
            "compared": "all halves of the radiographs with each value"}


def _fracture_attribute(rows, column, threshold, ci_method) -> dict:
    negatives = [r for r in rows if r["truth"] == 0]
    p_neg = np.array([r["probability"] for r in negatives])
    strata = _strata([r for r in rows if r["truth"] == 1], column)
    table, sens, aucs = [], [], []
    for value, members in strata.items():
        y, p = _arrays(members + negatives)
        m = binary_metrics(y, p, threshold, n_bootstrap=0, ci_method=ci_method)
        table.append({"value": value, "small": len(members) < SMALL, "positives": len(members),
                      "negatives": len(negatives), "detected": m["confusion"]["tp"],
                      "sensitivity": m["sensitivity"], "auc": m["auc"]})
        if value != NOT_GIVEN:
            sens.append((m["confusion"]["tp"], len(members)))
            aucs.append((p[: len(members)], p_neg))
    tests = {"sensitivity": proportions_test(*zip(*sens)) if sens else None,
             "auc": auc_test(aucs, shared_negatives=True)}
    return {"level": "fracture", "strata": table, "tests": tests,
            "compared": "the fractured halves with each value; the AUC against all intact halves"}


def subgroup_analysis(rows: list[dict], levels: dict[str, str], threshold: float, *, ci_method: str = "wald",
                      n_bootstrap: int = 2000, seed: int = 0, columns: list[str] | None = None) -> dict:
    """Per attribute (``levels``: column -> "image" | "fracture"; ``columns`` picks some), the
    figures per value and the tests between values. ``rows`` are evaluate's per-half rows
    (``truth``, ``probability``, ``attributes``). Returns ``{"attributes": {column: ...},
    "tests": [every test, with ``p_holm``], "definition"}``."""
    chosen = [c for c in (columns or list(levels)) if c in levels]
    out: dict = {"attributes": {}, "tests": [], "definition": DEFINITION}
    for column in chosen:
        values = {r["attributes"].get(column) for r in rows} - {None, ""}
        if len(values) > MAX_VALUES:
            out["attributes"][column] = {"level": levels[column], "skipped":
                                         f"{len(values)} distinct values (more than {MAX_VALUES}): bin them first"}
            continue
        if levels[column] == "image":
            entry = _image_attribute(rows, column, threshold, ci_method, n_bootstrap, seed)
        else:
            entry = _fracture_attribute(rows, column, threshold, ci_method)
        out["attributes"][column] = entry
        for metric, test in entry["tests"].items():
            if test and test.get("p_value") is not None:
                out["tests"].append({"attribute": column, "metric": metric, "test": test["test"],
                                     "p_value": test["p_value"]})
    for test, adjusted in zip(out["tests"], holm([t["p_value"] for t in out["tests"]])):
        test["p_holm"] = adjusted
        out["attributes"][test["attribute"]]["tests"][test["metric"]]["p_holm"] = adjusted
    return out
