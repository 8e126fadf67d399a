"""hipcad.appliance: the box (hot-folder worker, result store, kiosk)."""
