"""The worker's ``heatmap`` key as the kiosk shows it: with ``suspected`` (the default) a study with
a hip not called fractured also gets the overlay with the heatmap on both hips (``DataDir.overlay_all``),
served at /results/<id>/overlay-all.jpg and linked from the study page; with ``all`` the one overlay
already shows both hips and there is no second one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hipcad.appliance.config import ConfigError, load_config
from hipcad.appliance.storage.files import DataDir
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE
from tests.appliance.support import drop, finished, kiosk_client, wait_for, worker_in_thread, write_config
from tests.helpers import phantom

SEED = 61804  # used by no other test
# an obvious neck fracture on the patient's right: the demo model calls that hip, not the left one
FRACTURED_RIGHT = {"fracture": "neck", "side": "right", "subtlety": {"neck": (0.0, 0.15)}}


def warm_pixels(rgb: np.ndarray) -> int:
    """Pixels in the red-orange-yellow of the heatmap's hot end (the radiograph itself is grey)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return int(np.count_nonzero((r - b >= 40) & (r >= g)))


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    path = tmp_path_factory.mktemp("heatmap-inputs") / "fractured-right.jpg"
    Image.fromarray(phantom(SEED, 0, size=(800, 640), **FRACTURED_RIGHT)[0]).save(path, quality=95)  # left: p 0.013
    return path


def read_one(tmp_path, radiograph, mode: str) -> dict:
    """The worker (demo model, ``heatmap = mode``) reads ``radiograph``; its API record."""
    config_path = write_config(tmp_path, DEFAULT_BUNDLE, heatmap=mode)
    config = load_config(config_path, environ={})
    assert config.heatmap == mode
    with worker_in_thread(config):
        drop(radiograph, config.hot_folder)
        wait_for(lambda: finished(config_path) == 1, 60, what="the result")
    (row,) = kiosk_client(config_path).get("/api/results").get_json()["results"]
    assert row["status"] == "done" and row["eligible"] is True, row
    assert {s["side"]: s["fracture"] for s in row["sides"]} == {"right": True, "left": False}, row["sides"]
    return row


def image_part(jpeg: bytes, width: int = 800, height: int = 640) -> np.ndarray:
    """The radiograph part of an overlay (the caption band below it cut off)."""
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))[:height, :width]


def hips(metadata: dict) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """(rows, columns) of the patient's right and left hip in the overlay (the radiograph's size:
    under 1024 px), without the top band of the R/L markers and the dashed midline."""
    mid, rows = round(metadata["midline_x"]), slice(100, metadata["rows"])
    image_left, image_right = (rows, slice(0, mid - 3)), (rows, slice(mid + 4, metadata["columns"]))
    return (image_left, image_right) if metadata["image_left_is_patient"] == "right" else (image_right, image_left)


def test_suspected_mode_writes_serves_and_links_the_overlay_on_both_hips(tmp_path, radiograph):
    row = read_one(tmp_path, radiograph, "suspected")
    item_id, data = row["id"], DataDir(tmp_path / "data")
    assert data.overlay(item_id).is_file() and data.overlay_all(item_id).is_file()
    assert row["overlay_all_url"] == f"/results/{item_id}/overlay-all.jpg"
    client = kiosk_client(tmp_path / "hipcad.toml")
    detail = client.get(f"/api/results/{item_id}").get_json()
    assert detail["overlay_all_url"] == row["overlay_all_url"]

    served = client.get(row["overlay_all_url"])
    assert served.status_code == 200 and served.mimetype == "image/jpeg"
    assert served.data == data.overlay_all(item_id).read_bytes()
    main = client.get(row["overlay_url"])
    assert main.status_code == 200 and main.data != served.data
    # what the reader sees: the main overlay colours the right hip only; the second one colours both
    overlay, both = image_part(main.data), image_part(served.data)
    right, left = hips(detail["metadata"])
    assert warm_pixels(overlay[right]) > 1000
    assert warm_pixels(overlay[left]) == 0
    assert warm_pixels(both[right]) > 1000 and warm_pixels(both[left]) > 1000

    page = client.get(f"/study/{item_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Heatmap on both hips" in html
    assert f'src="/results/{item_id}/overlay-all.jpg"' in html


def test_all_mode_has_one_overlay_with_both_hips_and_no_second_one(tmp_path, radiograph):
    row = read_one(tmp_path, radiograph, "all")
    item_id, data = row["id"], DataDir(tmp_path / "data")
    assert data.overlay(item_id).is_file()
    assert not data.overlay_all(item_id).exists()
    assert row["overlay_all_url"] is None
    client = kiosk_client(tmp_path / "hipcad.toml")
    assert client.get(f"/api/results/{item_id}").get_json()["overlay_all_url"] is None
    assert client.get(f"/results/{item_id}/overlay-all.jpg").status_code == 404
    overlay = image_part(client.get(row["overlay_url"]).data)
    right, left = hips(client.get(f"/api/results/{item_id}").get_json()["metadata"])
    assert warm_pixels(overlay[right]) > 1000 and warm_pixels(overlay[left]) > 1000
    html = client.get(f"/study/{item_id}").get_data(as_text=True)
    assert "Heatmap on both hips" not in html and "overlay-all" not in html


def test_an_unknown_heatmap_mode_in_the_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="heatmap must be suspected or all, not 'both'"):
        load_config(write_config(tmp_path, DEFAULT_BUNDLE, heatmap="both"), environ={})
