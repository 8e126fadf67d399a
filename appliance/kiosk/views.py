"""What the kiosk shows, computed once for the HTML pages and the JSON API alike: result items,
health and banners, from the store (the kiosk never touches the backend or the inputs)."""

from __future__ import annotations

import json
import time
from datetime import datetime

from hipcad.appliance.config import Config
from hipcad.runtime.model.notice import notice_for
from hipcad.appliance.storage.store import Store



def iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts else None


def clock(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S") if ts else ""


def day(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%a %d %b %Y") if ts else ""


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


def item_view(row, cad_visible: bool = True) -> dict:
    """One finished item as the API returns it (no patient identity)."""
    record = json.loads(row["result_json"]) if row["result_json"] else {}
    done = row["status"] == "done"
    metadata = record.get("metadata") or {}
    show = done and cad_visible
    return {
        "id": row["id"],
        "status": row["status"],
        "file": row["name"],
        "received_at": iso(row["received_at"]),
        "finished_at": iso(row["finished_at"]),
        "time": iso(row["finished_at"]),
        "duration_ms": row["total_ms"],
        "sides": record.get("sides", []) if show else [],
        "error": row["error"],
        "overlay_url": f"/results/{row['id']}/overlay.jpg" if show else None,
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
    return view


def patient_view(row) -> dict:
    """Patient identity for display on the page only (escaped by the template, never logged)."""
    return json.loads(row["patient_json"]) if row["patient_json"] else {}


def health(store: Store, config: Config, model_fallback: dict | None = None) -> dict:
    now = time.time()
    beat = store.get_state("worker")
    worker, at = beat if beat else ({}, None)
    age = round(now - at, 1) if at else None
    up = bool(beat) and worker.get("state") == "running" and age is not None and age <= config.heartbeat_stale_s
    backend_state = store.get_state("backend")
    backend = (backend_state[0] if backend_state else worker.get("backend")) or {}
    counts = store.status_counts()
    counters = store.counters()
    model = worker.get("model") or model_fallback or {}
    disk_low = worker.get("accepting") is False
    return {
        "status": "ok" if up and not disk_low else ("down" if not up else "degraded"),
        "worker": {
            "up": up,
            "heartbeat_age_s": age,
            "state": worker.get("state", "never started"),
            "pid": worker.get("pid"),
            "started_at": iso(worker.get("started_at")),
            "observer_alive": worker.get("observer_alive"),
            "inference_alive": worker.get("inference_alive"),
            "hot_folder_mode": worker.get("hot_folder_mode"),
            "accepting": worker.get("accepting"),
            "disk_free_mb": worker.get("disk_free_mb"),
            "min_free_mb": worker.get("min_free_mb", config.min_free_mb),
        },
        "backend": {**backend, "fallbacks": [{**e, "at": iso(e["at"])} for e in store.events("fallback", 10)]},
        "model": model,
        "queue": {"queued": counts["queued"], "processing": counts["processing"]},
        "counts": {
            "done": counters.get("done", 0),
            "failed": counters.get("failed", 0),
            "quarantined": counters.get("quarantined", 0),
            "duplicates": counters.get("duplicates", 0),
            "backend_fallbacks": counters.get("backend_fallbacks", 0),
        },
        "read_first": config.read_first,
        "dicom": dicom_health(store, config, worker, up),
    }


def dicom_health(store: Store, config: Config, worker: dict, worker_up: bool) -> dict:
    """The DICOM listener and each PACS destination, as the worker last reported them."""
    from hipcad.appliance.dicom.forward import destination_key

    state = worker.get("dicom_listener") or {}
    enabled = bool(config.dicom_port) or bool(state.get("enabled"))
    listener = {
        "enabled": enabled,
        "up": bool(enabled and worker_up and state.get("up")),
        "ae_title": state.get("ae_title", config.dicom_ae_title),
        "bind": state.get("bind", config.dicom_bind),
        "port": state.get("port", config.dicom_port) or None,
        "received": state.get("received", 0),
        "duplicates": state.get("duplicates", 0),
        "refused": state.get("refused", 0),
        "rejected_associations": state.get("rejected_associations", 0),
        "echoes": state.get("echoes", 0),
        "last_received_at": iso(state.get("last_received_at")),
        "last_rejected": {**state["last_rejected"], "at": iso(state["last_rejected"].get("at"))}
        if state.get("last_rejected") else None,
        "error": state.get("error"),
    }
    saved = store.get_state("pacs")
    reported = (saved[0].get("destinations") or {}) if saved else {}
    counts = store.delivery_counts()
    destinations = []
    for text in config.pacs_destinations:
        key = destination_key(text)
        info = reported.get(key, {})
        n = counts.get(key, {"pending": 0, "sent": 0, "failed": 0})
        failing = bool(info.get("last_error_at")) and (info.get("last_success_at") or 0) < info["last_error_at"]
        destinations.append({
            "name": key,
            "ae_title": info.get("ae_title"),
            "host": info.get("host"),
            "port": info.get("port"),
            "queue": n["pending"],
            "sent": n["sent"],
            "failed": n["failed"],
            "failing": failing,
            "last_success_at": iso(info.get("last_success_at")),
            "last_error": info.get("last_error"),
            "last_error_at": iso(info.get("last_error_at")),
            "next_try_at": iso(info.get("next_try_at")),
        })
    return {"listener": listener, "destinations": destinations}


def banners(h: dict) -> list[dict]:
    """The notices at the top of every page: (level, text). Words first; colour only helps."""
    out = []
    w = h["worker"]
    if not w["up"]:
        since = ago(w["heartbeat_age_s"]) if w["heartbeat_age_s"] is not None else "never"
        out.append({"level": "danger", "key": "worker-down",
                    "text": f"CAD WORKER NOT RUNNING: new radiographs are NOT being read (last sign of life: {since}). "
                            "Read films without CAD and call the on-call IT contact."})
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
    backend = h["backend"]
    if backend.get("runtime_fallback"):
        out.append({"level": "warning", "key": "fallback",
                    "text": f"GPU inference failed; now running on {backend.get('device', 'CPU')} ({backend.get('name')}). "
                            "Verdicts are unaffected; each image takes longer."})
    elif backend.get("fallback_reason") and "gpu" not in str(backend.get("device", "")).lower() \
            and "cuda" not in str(backend.get("device", "")).lower():
        out.append({"level": "info", "key": "cpu",
                    "text": f"Running on {backend.get('device', 'CPU')} ({backend.get('name')}) because the GPU backend "
                            f"is unavailable: {backend['fallback_reason']}"})
    return out
