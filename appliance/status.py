"""The box's status as the kiosk, /api/health and /metrics show it: the worker's heartbeat, the
backend in use, the queue and counts, the DICOM listener and each PACS destination. Read from the
store only (the kiosk never touches the worker's process or the backend)."""

from __future__ import annotations

import time

from hipcad.appliance.config import Config
from hipcad.appliance.storage.store import Store
from hipcad.appliance.timefmt import iso


def health(store: Store, config: Config, model_fallback: dict | None = None) -> dict:
    now = time.time()
    beat = store.get_state("worker")
    worker, at = beat if beat else ({}, None)
    age = round(now - at, 1) if at else None
    up = bool(beat) and worker.get("state") == "running" and age is not None and age <= config.heartbeat_stale_s
    stuck = up and bool(worker.get("inference_stuck"))  # alive, but the reading has stopped moving
    backend_state = store.get_state("backend")
    backend = (backend_state[0] if backend_state else worker.get("backend")) or {}
    counts = store.status_counts()
    counters = store.counters()
    model = worker.get("model") or model_fallback or {}
    disk_low = worker.get("accepting") is False
    return {
        "status": "down" if not up or stuck else ("degraded" if disk_low else "ok"),
        "worker": {
            "up": up,
            "heartbeat_age_s": age,
            "state": worker.get("state", "never started"),
            "pid": worker.get("pid"),
            "started_at": iso(worker.get("started_at")),
            "observer_alive": worker.get("observer_alive"),
            "inference_alive": worker.get("inference_alive"),
            "inference_stuck": stuck,
            "inference_stage": worker.get("inference_stage"),
            "inference_heartbeat_age_s": worker.get("inference_heartbeat_age_s"),
            "decoder": worker.get("decoder"),
            "writer_check": worker.get("writer_check"),
            "hot_folder_mode": worker.get("hot_folder_mode"),
            "accepting": worker.get("accepting"),
            "disk_free_mb": worker.get("disk_free_mb"),
            "min_free_mb": worker.get("min_free_mb", config.min_free_mb),
        },
        "backend": backend_health(store, backend),
        "model": model,
        "queue": {"queued": counts["queued"], "processing": counts["processing"]},
        "counts": {
            "done": counters.get("done", 0),
            "failed": counters.get("failed", 0),
            "quarantined": counters.get("quarantined", 0),
            "duplicates": counters.get("duplicates", 0),
            "backend_fallbacks": counters.get("backend_fallbacks", 0),
            "backend_returns": counters.get("backend_returns", 0),
        },
        "read_first": config.read_first,
        "dicom": dicom_health(store, config, worker, up),
    }


def backend_health(store: Store, backend: dict) -> dict:
    """The backend in use, as the worker last published it; with a regional inference server
    configured, ``server``: whether it is in use, since when, its last error and the next try."""
    out = {**backend, "fallbacks": [{**e, "at": iso(e["at"])} for e in store.events("fallback", 10)]}
    server = backend.get("server")
    if server:
        out["server"] = {**server, "since": iso(server.get("since")), "next_try_at": iso(server.get("next_try_at"))}
        out["returns"] = [{**e, "at": iso(e["at"])} for e in store.events("return", 10)]
    return out


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
