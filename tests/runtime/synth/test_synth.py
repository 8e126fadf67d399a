"""Synthetic phantoms (hipcad.runtime.synth) and the dataset folder format (hipcad.runtime.evaluation.dataset)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from hipcad.runtime import synth
from hipcad.runtime.evaluation import dataset as dsmod
from hipcad.runtime.evaluation.dataset import Box, DatasetError, ImageRecord, SideLabel
from hipcad.runtime.evaluation.labels_write import write_labels

SIZE = (600, 500)
SEED = 7
COUNT = 30
DICOM_SYNTAXES = {synth.FORMATS[f][0] for f in synth.DICOM_FORMATS}
LOSSLESS = {"dcm-explicit", "dcm-rle", "dcm-jpegls", "dcm-j2k"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A moderately sized run: the default format mix, more mirrored files than the default."""
    out = tmp_path_factory.mktemp("synth") / "run"
    synth.generate(out, COUNT, SEED, size=SIZE, mirror_rate=0.3, progress=False)
    return out


@pytest.fixture(scope="module")
def info(run_dir) -> dict[str, dict]:
    return {i["file"]: i for i in json.loads((run_dir / "synth.json").read_text())["images"]}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _display(path: Path) -> np.ndarray:
    """Bone-bright float image of a written file (window and MONOCHROME1 applied)."""
    if path.suffix == ".dcm":
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float64)
        if "WindowCenter" in ds:
            c, w = float(ds.WindowCenter), float(ds.WindowWidth)
            arr = np.clip((arr - (c - w / 2)) / w, 0, 1)
        else:
            arr = arr / (2 ** ds.BitsStored - 1)
        return 1.0 - arr if ds.PhotometricInterpretation == "MONOCHROME1" else arr
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


# ----------------------------------------------------------------------------- phantoms
def test_same_seed_same_phantom_and_different_seed_differs():
    a = synth.make_phantom(3, 1, size=SIZE)
    b = synth.make_phantom(3, 1, size=SIZE)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.boxes == b.boxes and a.regions == b.regions and a.vendor == b.vendor
    c = synth.make_phantom(4, 1, size=SIZE)
    assert c.pixels.shape != a.pixels.shape or not np.array_equal(a.pixels, c.pixels)


def test_same_seed_same_files(tmp_path):
    synth.generate(tmp_path / "a", 4, 11, size=SIZE, progress=False)
    synth.generate(tmp_path / "b", 4, 11, size=SIZE, progress=False)
    a_files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert a_files == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in a_files:
        if name == "synth.json":  # holds timings
            continue
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_about_half_fractured_both_sides_and_kinds():
    specs = [synth.sample_case(5, i) for i in range(200)]
    fx = [s.fracture for s in specs if s.fracture is not None]
    assert 75 <= len(fx) <= 125
    assert Counter(f.side for f in fx).keys() == {"right", "left"}
    assert Counter(f.kind for f in fx).keys() == set(synth.FRACTURE_KINDS)
    assert min(f.subtlety for f in fx) < 0.2 and max(f.subtlety for f in fx) > 0.8
    assert all(synth.sample_case(5, i, fracture_rate=0.0).fracture is None for i in range(20))
    assert all(synth.sample_case(5, i, fracture_rate=1.0).fracture is not None for i in range(20))


def test_subtlety_range_plants_a_harder_kind_and_changes_nothing_else():
    plain = [synth.sample_case(5, i, fracture_rate=1.0) for i in range(60)]
    harder = [synth.sample_case(5, i, fracture_rate=1.0, subtlety={"neck": (0.9, 1.0)}) for i in range(60)]
    for a, b in zip(plain, harder):
        assert (a.fracture.kind, a.fracture.side) == (b.fracture.kind, b.fracture.side) and a.vendor == b.vendor
        if a.fracture.kind == "neck":
            assert 0.9 <= b.fracture.subtlety <= 1.0 and b.fracture.subtlety == pytest.approx(0.9 + 0.1 * a.fracture.subtlety)
        else:
            assert a.fracture == b.fracture
    assert synth.sample_case(5, 3, subtlety={"neck": (0.0, 1.0)}) == synth.sample_case(5, 3)  # the full range: as before
    with pytest.raises(SystemExit):
        synth.build_parser().parse_args(["--out", "x", "--subtlety", "femur=0.2-0.4"])
    with pytest.raises(SystemExit):
        synth.build_parser().parse_args(["--out", "x", "--subtlety", "neck=0.8-0.2"])


def test_default_and_exact_sizes():
    for i in range(30):
        spec = synth.sample_case(1, i)
        assert 1400 <= spec.width <= 2400
        assert 1.1 < spec.width / spec.height < 1.55
    spec = synth.sample_case(1, 0, size=(4892, 4020))
    assert (spec.width, spec.height) == (4892, 4020)
    ph = synth.make_phantom(1, 0, size=(640, 480))
    assert ph.pixels.shape == (480, 640)


@pytest.mark.parametrize("kind", synth.FRACTURE_KINDS)
@pytest.mark.parametrize("index", [0, 1])
def test_the_fracture_is_the_only_difference(kind, index):
    """Same seed and index with and without the fracture: only the fractured hip changes."""
    fx = synth.make_phantom(2, index, size=SIZE, fracture=kind)
    no = synth.make_phantom(2, index, size=SIZE, fracture="none")
    assert no.fracture is None and not no.boxes
    assert fx.vendor == no.vendor and fx.regions == no.regions
    side = fx.fracture.side
    diff = fx.pixels.astype(np.int64) - no.pixels.astype(np.int64)
    ys, xs = np.nonzero(diff)
    assert len(xs) > 50, "the fracture must change the image"
    reg = fx.regions[side]["neck_trochanter"]
    assert xs.min() >= reg.x0 and xs.max() < reg.x1 and ys.min() >= reg.y0 and ys.max() < reg.y1
    # the change is concentrated in the fracture box (a displaced head also changes around it)
    box = fx.boxes[side]
    in_box = np.zeros(diff.shape, bool)
    in_box[int(box.y0):int(box.y1), int(box.x0):int(box.x1)] = True
    in_reg = np.zeros(diff.shape, bool)
    in_reg[int(reg.y0):int(reg.y1), int(reg.x0):int(reg.x1)] = True
    assert np.abs(diff[in_box]).mean() > 2.0 * np.abs(diff[in_reg & ~in_box]).mean()


def test_forced_side_and_geometry():
    for side in ("right", "left"):
        ph = synth.make_phantom(9, 0, size=SIZE, fracture="neck", side=side)
        assert set(ph.boxes) == {side}
        right = ph.regions["right"]["neck_trochanter"].center[0]
        left = ph.regions["left"]["neck_trochanter"].center[0]
        assert right < ph.midline_x < left  # standard orientation: patient right on the image left
        bx = ph.boxes[side].center[0]
        assert (bx < ph.midline_x) == (side == "right")
        assert ph.regions[side]["neck_trochanter"].contains(ph.boxes[side])


def test_bone_is_bright_in_the_display():
    ph = synth.make_phantom(6, 2, size=SIZE, fracture="none")
    d = ph.display().astype(float)
    for regs in ph.regions.values():
        b = regs["neck_trochanter"]
        assert d[int(b.y0):int(b.y1), int(b.x0):int(b.x1)].mean() > d.mean()


def test_parse_formats():
    assert synth.parse_formats(None) == pytest.approx(synth.DEFAULT_FORMAT_WEIGHTS)
    w = synth.parse_formats("dicom,jpeg")
    assert set(w) == set(synth.DICOM_FORMATS) | {"jpeg"} and sum(w.values()) == pytest.approx(1.0)
    assert sum(v for k, v in w.items() if k.startswith("dcm-")) == pytest.approx(0.7)
    assert synth.parse_formats("j2k") == {"dcm-j2k": 1.0}
    with pytest.raises(ValueError, match="unknown format"):
        synth.parse_formats("dicom,tiff")
    assert all(synth.sample_case(0, i, formats="png").vendor["format"] == "png" for i in range(5))


# ----------------------------------------------------------------------------- the written run
def test_run_files_decode(run_dir, info):
    for name, i in info.items():
        path = run_dir / name
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
            assert arr.shape == (ds.Rows, ds.Columns) == (SIZE[1], SIZE[0])
            assert str(ds.file_meta.TransferSyntaxUID) == i["transfer_syntax"]
            assert int(arr.max()) <= 2 ** ds.BitsStored - 1
        else:
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "L" and img.size == SIZE
                img.load()


def test_run_has_every_format(run_dir, info):
    syntaxes = set()
    for name in info:
        if name.endswith(".dcm"):
            syntaxes.add(str(pydicom.dcmread(run_dir / name, stop_before_pixels=True).file_meta.TransferSyntaxUID))
    assert syntaxes == DICOM_SYNTAXES
    formats = Counter(i["format"] for i in info.values())
    assert formats["jpeg"] > 0
    assert 0.45 < sum(v for k, v in formats.items() if k.startswith("dcm-")) / COUNT < 0.95
    assert {i["photometric"] for i in info.values()} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({i["bits"] for i in info.values()}) >= 3


def test_dicom_headers(run_dir, info):
    sop_classes = set(synth.writer._SOP_CLASSES.values())
    for name, i in info.items():
        if not name.endswith(".dcm"):
            continue
        ds = pydicom.dcmread(run_dir / name, stop_before_pixels=True)
        assert ds.SOPClassUID in sop_classes
        assert ds.Modality in ("DX", "CR")
        assert ds.BodyPartExamined == "PELVIS" and ds.ViewPosition == "AP"
        assert str(ds.PatientName).startswith("PHANTOM^")
        assert ds.PatientID == synth.patient_id(i["index"])
        assert "SYNTHETIC PHANTOM" in ds.ImageComments and "SYNTHETIC PHANTOM" in ds.DeidentificationMethod
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert pydicom.uid.UID(uid).is_valid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.PhotometricInterpretation == i["photometric"]
        orientation = "\\".join(ds.PatientOrientation)
        assert orientation == ("R\\F" if i["mirrored"] else "L\\F")
    assert any(i["mirrored"] for i in info.values())
    assert not any(i["mirrored"] for n, i in info.items() if not n.endswith(".dcm"))
    uids = [pydicom.dcmread(run_dir / n, stop_before_pixels=True).SOPInstanceUID for n in info if n.endswith(".dcm")]
    assert len(set(uids)) == len(uids)


def test_labels_and_regions(run_dir, info):
    labels = _read_csv(run_dir / "labels.csv")
    regions = _read_csv(run_dir / "regions.csv")
    assert list(labels[0]) == [*dsmod.LABEL_FIELDS, "vendor", "fracture_type", "displaced"]
    assert list(regions[0]) == list(dsmod.REGION_FIELDS)
    assert {r["file"] for r in labels} == set(info)
    fractured = {r["file"] for r in labels if r["side"] != "none"}
    assert fractured == {n for n, i in info.items() if i["fracture"]}
    for row in labels:  # the attributes the generator knows, as extra columns
        fx = info[row["file"]]["fracture"]
        assert row["vendor"].startswith("PHANTOM ")
        assert (row["fracture_type"], row["displaced"]) == (
            (fx["kind"], "yes" if fx["displaced"] else "no") if fx else ("", ""))
    assert 0.25 < len(fractured) / COUNT < 0.75
    assert Counter((r["file"], r["side"]) for r in regions) == Counter({(n, s): 1 for n in info for s in ("right", "left")})

    data = dsmod.load_dataset(run_dir)
    assert len(data) == COUNT and data.has_regions
    for rec in data:
        i = info[rec.file]
        mirrored = i["mirrored"]
        width, height = i["width"], i["height"]
        rr = rec.region("right")
        rl = rec.region("left")
        for b in (rr, rl):
            assert 0 <= b.x0 < b.x1 <= width and 0 <= b.y0 < b.y1 <= height
        # patient right is on the image left in L\F, on the image right in R\F
        assert (rr.center[0] > rl.center[0]) == mirrored
        midline = (rr.center[0] + rl.center[0]) / 2
        for side in rec.fractured_sides:
            box = rec.sides[side].box
            assert side == i["fracture"]["side"]
            assert 0 <= box.x0 < box.x1 <= width and 0 <= box.y0 < box.y1 <= height
            assert rec.region(side).contains(box)
            on_image_left = box.center[0] < midline
            assert on_image_left == ((side == "right") != mirrored)


def test_stored_pixels_show_the_fracture_where_labelled(run_dir, info):
    """Lossless files: the pixels that differ from the same phantom without a fracture lie in the labelled hip."""
    data = dsmod.load_dataset(run_dir)
    checked = 0
    for rec in data:
        i = info[rec.file]
        if not rec.fractured or i["format"] not in LOSSLESS:
            continue
        stored = pydicom.dcmread(rec.path).pixel_array.astype(np.int64)
        twin = synth.make_phantom(SEED, i["index"], size=SIZE, mirror_rate=0.3, fracture="none").pixels
        twin = twin.astype(np.int64)
        if i["mirrored"]:
            twin = twin[:, ::-1]
        ys, xs = np.nonzero(stored != twin)
        side = rec.fractured_sides[0]
        reg = rec.region(side)
        assert len(xs) > 0
        assert xs.min() >= reg.x0 and xs.max() < reg.x1 and ys.min() >= reg.y0 and ys.max() < reg.y1
        checked += 1
    assert checked >= 2


def test_written_images_are_bone_bright(run_dir, info):
    for name in info:
        d = _display(run_dir / name)
        rec_regions = [r for r in _read_csv(run_dir / "regions.csv") if r["file"] == name]
        for r in rec_regions:
            x0, y0, x1, y1 = (int(float(r[k])) for k in ("x0", "y0", "x1", "y1"))
            assert d[y0:y1, x0:x1].mean() > np.median(d), name


def test_write_phantom_other_formats(tmp_path):
    ph = synth.make_phantom(8, 3, size=SIZE, fracture="trochanteric", side="left")
    for fmt in synth.FORMATS:
        rec = synth.write_phantom(ph, tmp_path, name=f"x/{fmt}{synth.FORMATS[fmt][1]}", fmt=fmt)
        assert rec.path.is_file() and rec.sides["left"].fracture and not rec.sides["right"].fracture
        if fmt.startswith("dcm-"):
            arr = pydicom.dcmread(rec.path).pixel_array
        else:
            arr = np.asarray(Image.open(rec.path))
        assert arr.shape == (SIZE[1], SIZE[0])


def test_mirrored_file(tmp_path):
    ph = synth.make_phantom(12, 0, size=SIZE, formats="dcm-explicit", mirror_rate=1.0, fracture="neck", side="right")
    rec = synth.write_phantom(ph, tmp_path)
    ds = pydicom.dcmread(rec.path)
    assert list(ds.PatientOrientation) == ["R", "F"]
    assert np.array_equal(ds.pixel_array, ph.pixels[:, ::-1])
    assert rec.sides["right"].box == ph.boxes["right"].mirrored(SIZE[0])
    assert rec.sides["right"].box.center[0] > SIZE[0] / 2 > ph.boxes["right"].center[0]
    assert dsmod.image_half("right", ds.PatientOrientation) == "right"
    # JPEG files are never mirrored
    jp = synth.make_phantom(12, 0, size=SIZE, formats="jpeg", mirror_rate=1.0)
    assert synth.write_phantom(jp, tmp_path).regions == jp.regions


def test_save_preview(tmp_path):
    ph = synth.make_phantom(1, 2, size=SIZE, fracture="neck")
    path = synth.save_preview(ph, tmp_path / "p.png", width=300)
    with Image.open(path) as img:
        assert img.size[0] == 300 and img.mode == "RGB"


# ----------------------------------------------------------------------------- command line
def test_synth_main(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = synth.main(["--out", str(out), "--count", "3", "--seed", "4", "--size", "400x330",
                           "--formats", "dicom,jpeg", "--fracture-rate", "1", "--preview", str(tmp_path / "p.png")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "wrote 3 synthetic phantoms" in text and "fractured: 3" in text
    assert (out / "labels.csv").is_file() and (out / "regions.csv").is_file() and (tmp_path / "p.png").is_file()
    data = dsmod.load_dataset(out)
    assert len(data) == 3 and all(rec.fractured for rec in data)
    # an existing dataset is not overwritten without --force
    assert synth.main(["--out", str(out), "--count", "1", "-q"]) == 1
    assert "--force" in capsys.readouterr().err
    assert synth.main(["--out", str(out), "--count", "1", "--size", "400x330", "--force", "-q"]) == 0
    assert len(dsmod.load_dataset(out)) == 1
    with pytest.raises(SystemExit):
        synth.main(["--out", str(out), "--size", "big"])
    assert synth.main(["--out", str(tmp_path / "z"), "--formats", "tiff"]) == 1


# ----------------------------------------------------------------------------- dataset format
def _write(root: Path, labels: str, regions: str | None = None, files=("a.dcm", "sub/b.jpg")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"x")
    (root / "labels.csv").write_text(labels)
    if regions is not None:
        (root / "regions.csv").write_text(regions)
    return root


HEADER = "file,patient_id,side,x0,y0,x1,y1\n"
RHEADER = "file,side,region,x0,y0,x1,y1\n"


def test_dataset_roundtrip(tmp_path):
    recs = [
        ImageRecord("a.dcm", tmp_path / "a.dcm", "P1", {"right": SideLabel(True, Box(10, 20, 30.5, 40)),
                                                        "left": SideLabel(False)},
                    regions={"right": {"neck_trochanter": Box(0, 0, 50, 60)}, "left": {"neck_trochanter": Box(60, 0, 99, 60)}}),
        ImageRecord("sub/b.jpg", tmp_path / "sub/b.jpg", "P1", {"right": SideLabel(False), "left": SideLabel(False)}),
        ImageRecord("c.png", tmp_path / "c.png", "P2", {"right": SideLabel(True, None), "left": SideLabel(True, Box(1, 2, 3, 4))}),
    ]
    _write(tmp_path, "", files=("a.dcm", "sub/b.jpg", "c.png"))
    write_labels(tmp_path, recs)
    text = (tmp_path / "labels.csv").read_text()
    assert text.splitlines()[0] == HEADER.strip()
    assert "sub/b.jpg,P1,none,,,," in text and "a.dcm,P1,right,10,20,30.5,40" in text
    data = dsmod.load_dataset(tmp_path)
    assert [r.file for r in data] == ["a.dcm", "sub/b.jpg", "c.png"]
    for got, want in zip(data, recs):
        assert got.sides == want.sides and got.patient_id == want.patient_id and got.path == want.path
        assert got.regions == want.regions
    assert data.summary() == {"images": 3, "patients": 2, "fractured_images": 2, "fractured_sides": 3, "intact_sides": 3}
    halves = list(dsmod.iter_halves(data))
    assert len(halves) == 6 and [h[1] for h in halves[:2]] == ["right", "left"]
    assert halves[0][2] == SideLabel(True, Box(10, 20, 30.5, 40))


def test_dataset_accepts_excel_style(tmp_path):
    labels = "\ufeffFile,Patient_ID,Side,x0,y0,x1,y1,notes\r\na.dcm,P1,RIGHT,1,2,3,4,hello\r\n\r\nsub\\b.jpg,P2,None,,,,\r\n"
    data = dsmod.load_dataset(_write(tmp_path, labels))
    assert data.by_file("a.dcm").sides["right"].box == Box(1, 2, 3, 4)
    assert not data.by_file("sub/b.jpg").fractured


@pytest.mark.parametrize(
    "labels, message, line",
    [
        (HEADER + "a.dcm,P1,none,,,,\nmissing.dcm,P2,right,1,2,3,4\n", "unknown file missing.dcm", 3),
        (HEADER + "a.dcm,P1,both,1,2,3,4\n", "side 'both'", 2),
        (HEADER + "a.dcm,P1,right,30,2,10,4\n", "inverted", 2),
        (HEADER + "a.dcm,P1,right,1,20,3,4\n", "inverted", 2),
        (HEADER + "a.dcm,P1,right,-1,2,3,4\n", "negative", 2),
        (HEADER + "a.dcm,P1,right,1,2,3,\n", "incomplete", 2),
        (HEADER + "a.dcm,P1,right,1,2,three,4\n", "not numeric", 2),
        (HEADER + "a.dcm,P1,right,1,2,3,4\nsub/b.jpg,P1,none,,,,\na.dcm,P1,right,1,2,3,4\n", "duplicate row", 4),
        (HEADER + "a.dcm,P1,none,,,,\na.dcm,P1,none,,,,\n", "duplicate row", 3),
        (HEADER + "a.dcm,P1,none,1,2,3,4\n", "cannot have a box", 2),
        (HEADER + "a.dcm,P1,none,,,,\na.dcm,P1,left,1,2,3,4\n", "marked 'none'", 3),
        (HEADER + "a.dcm,P1,left,1,2,3,4\na.dcm,P1,none,,,,\n", "has a fracture row", 3),
        (HEADER + "a.dcm,P1,left,1,2,3,4\na.dcm,P2,right,1,2,3,4\n", "patient_id", 3),
        (HEADER + "a.dcm,,left,1,2,3,4\n", "patient_id is empty", 2),
        (HEADER + "../a.dcm,P1,left,1,2,3,4\n", "relative", 2),
        ("file,side,x0,y0,x1,y1\na.dcm,left,1,2,3,4\n", "lacks patient_id", 1),
    ],
)
def test_dataset_refuses_bad_labels(tmp_path, labels, message, line):
    root = _write(tmp_path, labels)
    with pytest.raises(DatasetError, match=message) as err:
        dsmod.load_dataset(root)
    assert f"labels.csv, line {line}" in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "regions, message, line",
    [
        (RHEADER + "a.dcm,right,neck_trochanter,1,2,3,4\nzzz.dcm,left,neck_trochanter,1,2,3,4\n", "unknown file zzz.dcm", 3),
        (RHEADER + "a.dcm,none,neck_trochanter,1,2,3,4\n", "side 'none'", 2),
        (RHEADER + "a.dcm,left,neck_trochanter,5,2,3,4\n", "inverted", 2),
        (RHEADER + "a.dcm,left,neck_trochanter,,,,\n", "empty", 2),
        (RHEADER + "a.dcm,left,neck_trochanter,1,2,3,4\na.dcm,left,neck_trochanter,1,2,3,5\n", "duplicate region", 3),
    ],
)
def test_dataset_refuses_bad_regions(tmp_path, regions, message, line):
    root = _write(tmp_path, HEADER + "a.dcm,P1,none,,,,\n", regions)
    with pytest.raises(DatasetError, match=message) as err:
        dsmod.load_dataset(root)
    assert f"regions.csv, line {line}" in str(err.value)


def test_dataset_missing_labels(tmp_path):
    with pytest.raises(DatasetError, match="labels.csv"):
        dsmod.load_dataset(tmp_path)
    assert len(dsmod.load_dataset(_write(tmp_path / "x", HEADER + "gone.dcm,P,none,,,,\n", files=()), check_files=False)) == 1


def test_split_by_patient_and_image_half(run_dir):
    data = dsmod.load_dataset(run_dir)
    parts = dsmod.split_by_patient(data, (0.6, 0.2, 0.2), seed=1)
    assert sum(len(p) for p in parts) == len(data)
    pids = [{r.patient_id for r in p} for p in parts]
    assert not (pids[0] & pids[1] or pids[0] & pids[2] or pids[1] & pids[2])
    assert [[r.file for r in p] for p in parts] == [[r.file for r in p] for p in dsmod.split_by_patient(
        list(reversed(data.images)), (0.6, 0.2, 0.2), seed=1)]
    assert dsmod.image_half("right", "L\\F") == "left" and dsmod.image_half("left", ["L", "F"]) == "right"
    assert dsmod.image_half("right", ["R", "F"]) == "right" and dsmod.image_half("left", None) == "right"


def test_box_helpers():
    b = Box(10, 20, 30, 60)
    assert b.width == 20 and b.height == 40 and b.center == (20, 40) and b.area == 800
    assert b.mirrored(100) == Box(70, 20, 90, 60) and b.mirrored(100).mirrored(100) == b
    assert b.scaled(0.5) == Box(5, 10, 15, 30)
    assert b.contains(Box(11, 21, 29, 59)) and not b.contains(Box(0, 21, 29, 59))
    assert b.intersection(Box(20, 30, 100, 100)) == 300


def test_generate_into_existing_folder_keeps_other_files(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    recs = synth.generate(tmp_path, 2, 0, size=SIZE, formats="jpeg", progress=False)
    assert (tmp_path / "keep.txt").exists() and len(recs) == 2
    shutil.rmtree(tmp_path)
