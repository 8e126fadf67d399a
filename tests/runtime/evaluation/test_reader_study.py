"""hipcad reader-study: CSV validation, labels, and the paper's two tests against scipy."""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest

from hipcad.runtime.evaluation import paired_tests as P
from hipcad.runtime.evaluation import reader_study as R

stats = pytest.importorskip("scipy.stats")

HEADER = ",".join(R.RESPONSE_FIELDS)


def write_study(path, n_readers=31, n_images=300, seed=0, truth_in_csv=True, files=None):
    """Synthetic read-first answers: every reader reads both hips of every image, without and then
    with the CAD; the CAD makes readers better on average. Returns (truth array, rows)."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_images, 2)) < 0.5).astype(int)
    rows = []
    for k in range(n_readers):
        p_before, p_after = rng.uniform(0.78, 0.9), rng.uniform(0.85, 0.95)
        for i in range(n_images):
            for j, side in enumerate(R.SIDES):
                t = truth[i, j]
                b = t if rng.random() < p_before else 1 - t
                a = t if rng.random() < p_after else 1 - t
                file = files[i] if files else f"cases/{i:04d}.dcm"
                rows.append([f"R{k:02d}", str(i + 1), file, side, str(t) if truth_in_csv else "", str(b), str(a),
                             "2024-05-02T10:00:00+09:00", "2024-05-02T10:00:30+09:00"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(R.RESPONSE_FIELDS)
        w.writerows(rows)
    return truth, rows


def run_json(capsys, *argv):
    assert R.main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # one JSON object
    return json.loads(out)


def run_error(capsys, *argv):
    assert R.main(list(argv)) == 1
    cap = capsys.readouterr()
    assert cap.out == ""
    msg = cap.err.strip()
    assert msg.startswith("hipcad reader-study: ") and "\n" not in msg and "Traceback" not in msg
    return msg


# -- the worked example: 31 readers x 300 images ----------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = tmp_path_factory.mktemp("study") / "reader-study.csv"
    truth, rows = write_study(path)
    return path, truth, rows


def test_worked_example_against_scipy_and_numpy(study, capsys):
    path, truth, rows = study
    res = run_json(capsys, str(path))
    assert res["n_readers"] == 31 and res["n_answers"] == 31 * 600 and res["n_images"] == 300

    # independent per-reader figures
    arr = np.array([[int(r[4]), int(r[5]), int(r[6])] for r in rows]).reshape(31, 600, 3)
    t, b, a = arr[..., 0], arr[..., 1], arr[..., 2]
    correct_b, correct_a = (b == t).sum(1), (a == t).sum(1)
    for k, reader in enumerate(res["readers"]):
        assert reader["reader"] == f"R{k:02d}" and reader["n"] == 600
        assert reader["before"]["accuracy"]["value"] == pytest.approx(correct_b[k] / 600)
        assert reader["after"]["accuracy"]["value"] == pytest.approx(correct_a[k] / 600)
        pos = t[k] == 1
        assert reader["before"]["sensitivity"]["value"] == pytest.approx(np.mean(b[k][pos] == 1))
        assert reader["after"]["specificity"]["value"] == pytest.approx(np.mean(a[k][~pos] == 0))
        p = correct_b[k] / 600
        half = 1.959964 * math.sqrt(p * (1 - p) / 600)
        assert reader["before"]["accuracy"]["ci95"] == pytest.approx([p - half, p + half], abs=1e-6)

    pooled = res["pooled"]
    assert pooled["before"]["accuracy"]["value"] == pytest.approx(correct_b.sum() / 18600)
    assert pooled["after"]["accuracy"]["value"] == pytest.approx(correct_a.sum() / 18600)
    assert pooled["mean_reader_accuracy"]["after"] == pytest.approx(np.mean(correct_a / 600))

    diffs = (correct_a - correct_b) / 600
    sp = stats.wilcoxon(diffs)
    w = res["wilcoxon"]
    assert w["n"] == 31 and w["statistic"] == sp.statistic
    assert w["p_value"] == pytest.approx(sp.pvalue, rel=1e-9)
    assert w["method"] == ("exact" if len(set(np.abs(diffs))) == 31 and 0 not in diffs else "asymptotic")

    table = [[int(correct_a.sum()), int(18600 - correct_a.sum())], [int(correct_b.sum()), int(18600 - correct_b.sum())]]
    f = res["fisher"]
    assert f["table"] == table and f["rows"] == ["after", "before"] and f["columns"] == ["correct", "incorrect"]
    sf = stats.fisher_exact(table)
    assert f["odds_ratio"] == pytest.approx(sf.statistic, rel=1e-12)
    assert f["p_value"] == pytest.approx(sf.pvalue, rel=1e-9)


def test_table_output(study, capsys):
    path, _, _ = study
    assert R.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "R00" in out and "pooled" in out and "Wald 95% CIs" in out
    assert "Wilcoxon signed-rank" in out and "Fisher's exact" in out


# -- Wilcoxon signed-rank -------------------------------------------------------------------------

def _wilcoxon_cases():
    rng = np.random.default_rng(42)
    cases = [
        ("exact", rng.normal(0.03, 0.04, 31)),  # continuous, no ties
        ("exact", rng.normal(0.0, 1.0, 50)),
        ("exact", np.array([0.1, -0.2, 0.3, 0.4, 0.5])),
        ("asymptotic", rng.normal(0.1, 1.0, 51)),  # n > 50
        ("asymptotic", rng.integers(-3, 8, 31) / 300),  # ties and zeros, n > 13
        ("asymptotic", np.array([0.0] * 5 + list(rng.normal(0.2, 1, 60)))),
        ("exact-permutation", np.array([0.0, 0.01, 0.01, -0.02, 0.03, 0.05, 0.05, 0.05])),  # ties + zero, n <= 13
        ("exact-permutation", rng.integers(-2, 4, 13).astype(float)),
        ("exact-permutation", np.array([0.0, 0.0, 0.0])),
        ("exact-permutation", np.array([1.0, -1.0])),
        ("exact-permutation", np.array([0.0, 1.0, 2.0, 3.0])),  # a zero -> not "exact"
    ]
    for seed in range(6):  # a few random ones
        r = np.random.default_rng(seed)
        n = int(r.integers(5, 45))
        cases.append((None, r.integers(-4, 6, n) / r.choice([100, 300, 600])))
    return cases


@pytest.mark.parametrize("method, d", _wilcoxon_cases())
def test_wilcoxon_agrees_with_scipy(method, d):
    ours = P.wilcoxon_signed_rank(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = stats.wilcoxon(d)
    if method is not None:
        assert ours["method"] == method
    assert ours["statistic"] == sp.statistic
    assert ours["n"] == len(d) and ours["n_zero"] == int(np.sum(d == 0))
    assert ours["p_value"] == pytest.approx(sp.pvalue, rel=1e-10, abs=1e-15)
    if ours["method"] == "asymptotic":
        res = stats.wilcoxon(d, method="asymptotic")
        assert ours["z"] == pytest.approx(res.zstatistic, rel=1e-10)


def test_wilcoxon_all_zero_large_is_nan_like_scipy():
    ours = P.wilcoxon_signed_rank(np.zeros(20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(stats.wilcoxon(np.zeros(20)).pvalue)
    assert ours["method"] == "asymptotic" and math.isnan(ours["p_value"]) and ours["n_nonzero"] == 0


# -- Fisher's exact test --------------------------------------------------------------------------

def _fisher_tables():
    rng = np.random.default_rng(7)
    tables = [[[8, 2], [1, 5]], [[3, 3], [3, 3]], [[10, 0], [0, 10]], [[0, 5], [5, 0]], [[1, 9], [11, 3]],
              [[5, 0], [3, 0]], [[0, 0], [2, 3]], [[7, 12], [12, 7]], [[25, 40], [40, 25]],
              [[16885, 1715], [15480, 3120]], [[2000, 40], [1950, 90]]]
    for m in (4, 20, 60, 500, 3000):
        tables += rng.integers(0, m, (3, 2, 2)).tolist()
    return tables


@pytest.mark.parametrize("table", _fisher_tables())
def test_fisher_agrees_with_scipy(table):
    ours = P.fisher_exact(table)
    sp = stats.fisher_exact(table)
    assert ours["p_value"] == pytest.approx(sp.pvalue, rel=1e-9, abs=1e-300)
    if np.isnan(sp.statistic):
        assert math.isnan(ours["odds_ratio"])
    else:
        assert ours["odds_ratio"] == pytest.approx(sp.statistic, rel=1e-12)


def test_fisher_is_fast_and_exact_on_a_large_symmetric_table():
    ours = P.fisher_exact([[70000, 70003], [70003, 70000]])
    assert ours["p_value"] == pytest.approx(stats.fisher_exact([[70000, 70003], [70003, 70000]]).pvalue, rel=1e-9)


# -- validation -----------------------------------------------------------------------------------

def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bad_rows_are_listed_with_line_numbers(tmp_path, capsys):
    p = _write(tmp_path / "bad.csv", [
        HEADER,
        "R1,1,a.dcm,right,1,1,1,,",
        "R1,1,a.dcm,up,1,1,1,,",  # line 3: side
        "R1,2,b.dcm,left,1,2,1,,",  # line 4: before
        "R1,2,b.dcm,right,x,1,1,,",  # line 5: truth
        "R1,1,a.dcm,right,1,0,0,,",  # line 6: duplicate of line 2
        "",
        ",3,c.dcm,left,0,0,0,,",  # line 8: no reader
    ])
    msg = run_error(capsys, str(p))
    assert "5 bad rows" in msg
    for frag in ("line 3: side 'up'", "line 4: before '2'", "line 5: truth 'x'", "line 6: duplicate", "(first at line 2)",
                 "line 8: the reader is empty"):
        assert frag in msg
    with pytest.raises(R.ReaderStudyError, match="line 3"):
        R.read_responses(p)


def test_header_and_file_errors(tmp_path, capsys):
    msg = run_error(capsys, str(_write(tmp_path / "h.csv", ["reader,file,side,truth,before", "R1,a,right,1,1"])))
    assert "line 1" in msg and "study_id" in msg and "after" in msg
    assert "cannot read" in run_error(capsys, str(tmp_path / "missing.csv"))
    assert "empty" in run_error(capsys, str(_write(tmp_path / "e.csv", [""])))
    (tmp_path / "bin.csv").write_bytes(HEADER.encode() + b"\nR1,1,\xff\xfe,right,1,1,1,,\n")
    assert "UTF-8" in run_error(capsys, str(tmp_path / "bin.csv"))


def test_unfinished_rows_are_errors_unless_skipped(tmp_path, capsys):
    lines = [HEADER] + [f"R{k},{i},f{i}.dcm,{s},{(i + k) % 2},{i % 2},{(i + 1) % 2},," for k in range(3)
                        for i in range(4) for s in R.SIDES]
    lines.append("R9,1,f1.dcm,right,1,1,,,")  # answered before, not after
    p = _write(tmp_path / "r.csv", lines)
    msg = run_error(capsys, str(p))
    assert f"line {len(lines)}: the after answer is empty" in msg and "--skip-incomplete" in msg
    res = run_json(capsys, str(p), "--skip-incomplete")
    assert res["n_readers"] == 3 and res["n_answers"] == 24
    assert any("1 unfinished row left out" in n for n in res["notes"])
    assert any("only 3 readers" in n for n in res["notes"])


def test_missing_truth_without_labels_is_an_error(tmp_path, capsys):
    p = tmp_path / "r.csv"
    write_study(p, n_readers=2, n_images=3, truth_in_csv=False)
    msg = run_error(capsys, str(p))
    assert "12 rows without truth" in msg and "line 2 (cases/0000.dcm right)" in msg and "--labels" in msg


# -- labels ---------------------------------------------------------------------------------------

def _labels(root, truth, files):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["file,patient_id,side,x0,y0,x1,y1"]
    for i, f in enumerate(files):
        sides = [s for j, s in enumerate(R.SIDES) if truth[i, j]]
        for s in sides:
            lines.append(f"{f},P{i},{s},10,20,110,140" if i % 2 else f"{f},P{i},{s},,,,")
        if not sides:
            lines.append(f"{f},P{i},none,,,,")
    return _write(root / "labels.csv", lines)


def test_labels_supply_the_truth(tmp_path, capsys):
    n = 40
    files = [f"site{i % 3}/img_{i:03d}.dcm" for i in range(n)]
    with_truth = tmp_path / "with.csv"
    truth, _ = write_study(with_truth, n_readers=8, n_images=n, seed=3, files=files)
    # the kiosk wrote only the base names and no truth
    without = tmp_path / "kiosk.csv"
    write_study(without, n_readers=8, n_images=n, seed=3, truth_in_csv=False, files=[f.split("/")[1] for f in files])
    labels = _labels(tmp_path / "DATASET", truth, files)

    want = run_json(capsys, str(with_truth))
    got = run_json(capsys, str(without), "--labels", str(labels))
    assert got["pooled"] == want["pooled"] and got["wilcoxon"] == want["wilcoxon"] and got["fisher"] == want["fisher"]
    assert run_json(capsys, str(without), "--labels", str(tmp_path / "DATASET"))["fisher"] == want["fisher"]

    # full relative paths match too, and agreeing truths are fine
    assert run_json(capsys, str(with_truth), "--labels", str(labels))["pooled"] == want["pooled"]


def test_labels_errors(tmp_path, capsys):
    files = ["a/x.dcm", "b/x.dcm", "c/y.dcm"]
    truth = np.array([[1, 0], [0, 0], [0, 1]])
    labels = _labels(tmp_path / "DS", truth, files)
    p = _write(tmp_path / "r.csv", [
        HEADER,
        "R1,1,x.dcm,right,,1,1,,",  # ambiguous basename
        "R1,2,z.dcm,right,,1,1,,",  # not in labels
        "R1,3,y.dcm,left,0,1,1,,",  # contradicts labels (left of y is fractured)
        "R1,3,c/y.dcm,right,,0,0,,",  # fine
    ])
    msg = run_error(capsys, str(p), "--labels", str(labels))
    assert "3 rows do not match the labels" in msg
    assert "line 2: x.dcm matches several files" in msg and "line 3: z.dcm is not in" in msg
    assert "line 4: truth 0 for y.dcm left contradicts" in msg

    (tmp_path / "BAD").mkdir()
    bad = _write(tmp_path / "BAD" / "labels.csv", ["file,patient_id,side,x0,y0,x1,y1", "a.dcm,P1,middle,,,,"])
    msg = run_error(capsys, str(p), "--labels", str(bad))
    assert "line 2" in msg and "middle" in msg
    assert "no such labels file" in run_error(capsys, str(p), "--labels", str(tmp_path / "nope.csv"))


def test_kiosk_export_round_trip(tmp_path, capsys):
    """The kiosk's own writer (appliance.readfirst) -> reader-study: quoted names and None answers."""
    pytest.importorskip("hipcad.appliance.kiosk.readfirst")
    from hipcad.appliance.kiosk import reader_answers as readfirst

    class FakeStore:
        def all_answers(self):
            out = []
            for k, name in enumerate(["-Dr A", "Dr B", "=C"]):  # spreadsheet-guarded on export
                for i in range(6):
                    for s in R.SIDES:
                        t = {"right": i % 2, "left": (i // 2) % 2}
                        out.append({"reader": name, "item_id": i, "file": f"{i}.png", "side": s,
                                    "truth_json": json.dumps(t), "before": (t[s] + k + i) % 2 if i else t[s],
                                    "after": t[s], "before_at": 1.7e9, "after_at": 1.7e9 + 30})
            return out

    p = tmp_path / "reader-study.csv"
    p.write_text(readfirst.reader_study_csv(FakeStore()), encoding="utf-8")
    res = run_json(capsys, str(p))
    assert [r["reader"] for r in res["readers"]] == ["-Dr A", "Dr B", "=C"]
    assert all(r["after"]["accuracy"]["value"] == 1.0 for r in res["readers"])
    assert res["fisher"]["table"][0] == [36, 0]
