"""Sign in and out (named reader accounts; :mod:`.security` does the checking and throttling)."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for

from hipcad.appliance.logs import printable

log = logging.getLogger("hipcad.kiosk")

bp = Blueprint("login", __name__)


def _next() -> str:
    target = request.values.get("next", "/")
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return render_template("login.html", message=None, next=_next())
    tools = current_app.extensions["hipcad.security"]
    user, status = tools["attempt"](request.form.get("user", ""), request.form.get("password", ""))
    if user is None:
        message = ("Too many failed sign-ins: locked for 15 minutes." if status == 429
                   else "Unknown reader or wrong password.")
        return render_template("login.html", message=message, next=_next()), status
    session.clear()  # a new session (and CSRF token) after login: no fixation
    session["sid"] = tools["sessions"].open(user)
    session["reader"] = user  # read-first answers are the signed-in reader's
    return redirect(_next(), 303)


@bp.post("/logout")
def logout():
    current_app.extensions["hipcad.security"]["sessions"].close(session.get("sid"))
    log.info("logout: user %r from %s", printable(g.get("user") or ""), printable(request.remote_addr))
    session.clear()
    return redirect(url_for("login.login"), 303)
