"""What the kiosk shows, computed once for the HTML pages and the JSON API alike: result items and
the banners over the box's status (:mod:`hipcad.appliance.status`)."""

from __future__ import annotations

import json

from hipcad.appliance.timefmt import ago, iso
from hipcad.runtime.model.notice import notice_for


def item_view(row, cad_visible: bool = True) -> dict:
    """One finished item as the API returns it (no patient identity)."""
    record = json.loads(row["result_json"]) if row["result_json"] else {}
    done = row["status"] == "done"
    metadata = record.get("metadata") or {}
    show = done and cad_visible
    eligible = record.get("eligible", True) if done else None
    sides = record.get("sides", []) if show else []
    both_hips = show and record.get("heatmap") == "suspected" and any(not s["fracture"] for s in sides)
    return {
        "id": row["id"],
        "status": row["status"],
        "file": row["name"],
        "received_at": iso(row["received_at"]),
        "finished_at": iso(row["finished_at"]),
        "time": iso(row["finished_at"]),
        "duration_ms": row["total_ms"],
        "eligible": eligible,
        # an image the model is not for: no verdict, and why (shown even before a read-first answer)
        "not_assessed": (record.get("eligibility") or {}).get("reasons", []) if eligible is False else [],
        "sides": sides,
        "error": row["error"],
        "overlay_url": f"/results/{row['id']}/overlay.jpg" if show else None,
        "overlay_all_url": f"/results/{row['id']}/overlay-all.jpg" if both_hips else None,
        "image_url": f"/results/{row['id']}/image.jpg" if done else None,
        "url": f"/study/{row['id']}",
        "model": record.get("model") or {},
        "warnings": record.get("warnings", []) if done else [],
        "study_instance_uid": metadata.get("study_instance_uid"),
        "sop_instance_uid": metadata.get("sop_instance_uid"),
        "cad_hidden": done and not cad_visible,
    }


def item_detail(row, cad_visible: bool = True) -> dict:
    view = item_view(row, cad_visible)
    record = json.loads(row["result_json"]) if row["result_json"] else {}
    view["metadata"] = record.get("metadata") or {}
    view["timings_ms"] = record.get("timings_ms") or {}
    # where the time went, in seconds since the epoch (``hipcad bench --appliance``)
    view["stamps"] = {**(record.get("stamps") or {}), "finished_at": row["finished_at"]}
    return view


def patient_view(row) -> dict:
    """Patient identity for display on the page only (escaped by the template, never logged)."""
    return json.loads(row["patient_json"]) if row["patient_json"] else {}


def banners(h: dict) -> list[dict]:
    """The notices at the top of every page: (level, text). Words first; colour only helps."""
    out = []
    w = h["worker"]
    if not w["up"]:
        since = ago(w["heartbeat_age_s"]) if w["heartbeat_age_s"] is not None else "never"
        out.append({"level": "danger", "key": "worker-down",
                    "text": f"CAD WORKER NOT RUNNING: new radiographs are NOT being read (last sign of life: {since}). "
                            "Read films without CAD and call the on-call IT contact."})
    if w["up"] and w.get("inference_stuck"):
        out.append({"level": "danger", "key": "reading-stuck",
                    "text": "CAD READING STUCK: the worker runs, but its reading last moved "
                            f"{ago(w.get('inference_heartbeat_age_s'))}; new radiographs are NOT being read. The service "
                            "restarts itself; if this stays, read films without CAD and call the on-call IT contact."})
    if w.get("accepting") is False:
        out.append({"level": "danger", "key": "disk",
                    "text": f"DISK NEARLY FULL ({w.get('disk_free_mb')} MB free): new radiographs are not being accepted."})
    dicom = h.get("dicom") or {}
    listener = dicom.get("listener") or {}
    if w["up"] and listener.get("enabled") and not listener.get("up"):
        out.append({"level": "danger", "key": "dicom-listener",
                    "text": "DICOM LISTENER DOWN: radiographs sent from the modality are not being received"
                            + (f" ({listener['error']})" if listener.get("error") else "")
                            + ". Use the hot folder or read films without CAD, and call the on-call IT contact."})
    for dest in dicom.get("destinations", []):
        if dest["queue"] and dest["failing"]:
            out.append({"level": "warning", "key": f"pacs-{dest['name']}",
                        "text": f"CAD RESULTS NOT REACHING PACS {dest['name']}: {dest['queue']} waiting "
                                f"(last error: {dest['last_error']}). They are kept and sent when it answers."})
    model = h["model"]
    notice = notice_for(model) if model else None
    if notice:
        out.append({"level": "warning", "key": "demo-model", "text": f"{notice.banner}: {model.get('name')}"})
    out.extend(backend_banners(h["backend"]))
    return out


def backend_banners(backend: dict) -> list[dict]:
    server = backend.get("server")
    if server is not None:
        if server.get("in_use") or not backend.get("name"):
            return []
        since = server["since"][11:16] if server.get("since") else "start"
        return [{"level": "warning", "key": "server-down",
                 "text": f"INFERENCE SERVER UNREACHABLE ({server.get('url')}): this box reads the radiographs itself since "
                         f"{since} ({backend.get('name')} on {backend.get('device', 'CPU')}). Verdicts are unaffected; "
                         "each image takes longer. It goes back to the server as soon as the server answers."}]
    if backend.get("runtime_fallback"):
        return [{"level": "warning", "key": "fallback",
                 "text": f"GPU inference failed; now running on {backend.get('device', 'CPU')} ({backend.get('name')}). "
                         "Verdicts are unaffected; each image takes longer."}]
    device = str(backend.get("device", "")).lower()
    if backend.get("fallback_reason") and "gpu" not in device and "cuda" not in device:
        return [{"level": "info", "key": "cpu",
                 "text": f"Running on {backend.get('device', 'CPU')} ({backend.get('name')}) because the GPU backend "
                         f"is unavailable: {backend['fallback_reason']}"}]
    return []


def inference_place(backend: dict) -> str | None:
    """Where the radiographs are read, in a few words (the kiosk's header)."""
    if not backend.get("name"):
        return None
    server = backend.get("server") or {}
    if backend["name"] == "triton":
        return f"inference: server {server.get('url') or backend.get('device')}"
    return f"inference: this box ({backend['name']}, {backend.get('device', '?')})"
