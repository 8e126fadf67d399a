"""The kiosk findings of the security review, repeated: DNS-rebinding Host headers, password guessing,
the user name's timing, 500s on odd input, the file name without a login; and named reader accounts
with sign-in, sign-out, idle time-out and an access log."""

from __future__ import annotations

import logging
import time

import pytest

from hipcad.appliance.kiosk import accounts as acc
from hipcad.appliance.kiosk import create_app
from hipcad.appliance.kiosk.cli import main
from tests.appliance.kiosk.test_kiosk import make_config, populate, token_of

PASSWORD = "correct horse battery"


@pytest.fixture
def secured(tmp_path):
    users = tmp_path / "users"
    acc.add_user(users, "alice", PASSWORD)
    acc.add_user(users, "bob", PASSWORD + "!")
    config = make_config(tmp_path, kiosk_users_file=str(users), kiosk_allow_unauthenticated_loopback=False,
                         read_first=True, kiosk_trusted_hosts=["hipcad.local"])
    populate(config)
    return config


def sign_in(client, user: str = "alice", password: str = PASSWORD, **env):
    token = token_of(client.get("/login", **env).get_data(as_text=True))
    return client.post("/login", data={"user": user, "password": password, "csrf_token": token, "next": "/"}, **env)


def test_dns_rebinding_host_headers_are_refused(secured):
    client = create_app(secured).test_client()
    for host in ("attacker.example", "attacker.example:8080", "127.0.0.1.nip.io", "hipcad.local.evil.example"):
        for url in ("/", "/login", "/api/results", "/api/health", "/static/kiosk.css"):
            response = client.get(url, headers={"Host": host})
            assert 400 <= response.status_code < 500 and b"DOE" not in response.data, (host, url)
    assert client.get("/login", headers={"Host": "hipcad.local:8443"}).status_code == 200
    assert client.get("/login", headers={"Host": "[::1]:8080"}).status_code == 200


def test_21st_wrong_password_in_a_minute_is_locked_out(secured, caplog):
    client = create_app(secured).test_client()
    caplog.set_level(logging.WARNING, "hipcad.kiosk")
    statuses = [sign_in(client, "alice", f"guess {n}").status_code for n in range(21)]
    assert statuses[:20] == [401] * 20 and statuses[20] == 429
    assert sign_in(client, "alice", PASSWORD).status_code == 429  # even the right password, for 15 minutes
    assert client.get("/api/results", auth=("alice", PASSWORD)).status_code == 429  # HTTP Basic shares the lock
    assert sum("failed login: user 'alice' from 127.0.0.1" in r.message for r in caplog.records) == 21
    assert any("LOCKOUT for 900 s" in r.message for r in caplog.records)
    assert PASSWORD not in caplog.text and "guess 3" not in caplog.text
    other = sign_in(client, "bob", PASSWORD + "!", environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert other.status_code == 303  # another reader at another screen is not locked out


def test_user_check_does_the_same_work_for_unknown_names(monkeypatch):
    calls = []
    real = acc.check_password_hash
    monkeypatch.setattr(acc, "check_password_hash", lambda h, p: calls.append(h) or real(h, p))
    accounts = acc.Accounts({"alice": acc.generate_password_hash(PASSWORD)})
    for name in ("alice", "mallory", "dr.müller", "x" * 5000):
        calls.clear()
        assert accounts.check(name, "wrong") is None
        assert len(calls) == 1, name  # one scrypt whether the name exists or not
    assert accounts.check("alice", PASSWORD) == "alice"


def test_odd_input_is_a_4xx_not_a_500(secured):
    client = create_app(secured).test_client()
    auth = ("alice", PASSWORD)
    assert client.get("/api/results", auth=("dr.müller", "x")).status_code == 401
    assert client.get("/study/99999999999999999999", auth=auth).status_code == 404
    assert client.get("/api/results/99999999999999999999", auth=auth).status_code == 404
    assert client.get("/results/99999999999999999999/overlay.jpg", auth=auth).status_code == 404
    assert client.get("/api/results?before=99999999999999999999", auth=auth).status_code == 400
    assert client.get("/api/results?limit=-1", auth=auth).status_code == 400


def test_file_name_only_for_a_signed_in_reader(tmp_path, secured):
    open_config = make_config(tmp_path / "open")  # loopback, opened explicitly (the demo)
    populate(open_config)
    results = create_app(open_config).test_client().get("/api/results").get_json()["results"]
    assert results and all("file" not in r for r in results)
    assert "film-" not in create_app(open_config).test_client().get("/api/results/1").get_data(as_text=True)
    client = create_app(secured).test_client()
    assert client.get("/api/results").status_code == 401
    results = client.get("/api/results", auth=("alice", PASSWORD)).get_json()["results"]
    assert results[1]["file"] == "film-2.dcm"


def test_sign_in_named_answers_access_log_and_sign_out(secured, caplog):
    caplog.set_level(logging.INFO, "hipcad.kiosk")
    client = create_app(secured).test_client()
    assert client.get("/").status_code == 303
    response = sign_in(client)
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = client.get("/study/1").get_data(as_text=True)
    assert 'id="signed-in">alice<' in page and "Sign out" in page
    form = {"reader": "somebody else", "phase": "before", "right": "1", "left": "0", "csrf_token": token_of(page)}
    assert client.post("/study/1/answer", data=form).status_code == 303
    csv_text = client.get("/export/reader-study.csv").get_data(as_text=True)
    assert "alice,1,film-0.dcm,right" in csv_text and "somebody else" not in csv_text
    assert "user 'alice' from 127.0.0.1: opened study 1" in caplog.text
    assert "user 'alice' from 127.0.0.1: exported the reader study" in caplog.text
    assert "DOE" not in caplog.text
    page = client.get("/").get_data(as_text=True)
    assert client.post("/logout", data={"csrf_token": token_of(page)}).status_code == 303
    assert client.get("/").status_code == 303 and client.get("/api/results").status_code == 401


def test_idle_session_times_out_and_polling_does_not_keep_it(tmp_path, secured):
    import dataclasses

    client = create_app(dataclasses.replace(secured, kiosk_idle_timeout_s=1.0)).test_client()
    assert sign_in(client).status_code == 303
    assert client.get("/").status_code == 200
    for _ in range(3):
        time.sleep(0.4)
        client.get("/api/version")
    assert client.get("/").status_code == 303  # signed out after 1 s without activity


def test_add_user_command(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "k.toml"
    users = tmp_path / "kiosk-users"
    conf.write_text(f'data_dir = "{tmp_path / "data"}"\nkiosk_users_file = "{users}"\n')
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(PASSWORD + "\n"))
    assert main(["--config", str(conf), "--add-user", "dr night"]) == 0
    assert acc.Accounts(acc.read_users_file(users)).check("dr night", PASSWORD) == "dr night"
    assert oct(users.stat().st_mode & 0o777) == "0o640"
    users.write_text("broken line\n")
    with pytest.raises(Exception, match="line 1: expected NAME:HASH"):
        acc.read_users_file(users)
