"""The real daemon as an operator runs it: twistd subprocesses on loopback."""

import re
import shutil
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(90)


def _gateway(processes, tmp_path, config=None, **kw):
    proc = GatewayProcess(reactor, tmp_path, config, **kw)
    processes.append(proc)
    return proc


@pytest_twisted.inlineCallbacks
def test_bad_config_exits_non_zero_naming_the_key_path(processes, tmp_path):
    admin = free_port()
    proc = _gateway(
        processes, tmp_path,
        GatewayProcess.config(admin, "[[extensions]]\nid = '1'\n\n[patriot.bridge]\n"
                              "users = [{username = 'u', password = 'p', extension = 1}]\n"),
    )
    proc.spawn()
    code = yield proc.ended
    assert code != 0
    assert "patriot.bridge.users[0].extension: expected a string, got int 1" in proc.output
    assert proc.config_path in proc.output
    assert "Traceback" not in proc.output
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", admin)) != 0


@pytest_twisted.inlineCallbacks
def test_a_port_out_of_range_is_refused_when_the_config_loads_not_at_bind(processes, tmp_path):
    proc = _gateway(processes, tmp_path, GatewayProcess.config(free_port(), '[optimaccs]\nlisten = "tcp:80800"\n'))
    proc.spawn()
    code = yield proc.ended
    assert code != 0
    assert (f"gateway: configuration error: {proc.config_path}: optimaccs.listen: bad listening endpoint"
            " 'tcp:80800': port 80800 is out of range (0-65535)") in proc.output
    assert "cannot listen" not in proc.output and "Traceback" not in proc.output


@pytest_twisted.inlineCallbacks
def test_missing_config_file_exits_non_zero(processes, tmp_path):
    proc = _gateway(processes, tmp_path, args=())
    proc.config_path = str(tmp_path / "absent.toml")
    proc.spawn()
    code = yield proc.ended
    assert code != 0
    assert "absent.toml: cannot read the file" in proc.output


@pytest_twisted.inlineCallbacks
def test_port_in_use_exits_non_zero_naming_the_endpoint(processes, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        proc = _gateway(processes, tmp_path, GatewayProcess.config(port))
        proc.spawn()
        code = yield proc.ended
    finally:
        busy.close()
    assert code != 0
    assert f"cannot listen on tcp:{port}:interface=127.0.0.1 (admin)" in proc.output
    assert "Traceback" not in proc.output


@pytest_twisted.inlineCallbacks
def test_starting_twice_says_a_gateway_may_be_running_and_which_key_to_change(processes, tmp_path):
    admin = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = _gateway(processes, tmp_path / "first", GatewayProcess.config(admin))
    yield first.start(admin)
    second = _gateway(processes, tmp_path / "second", GatewayProcess.config(admin))
    second.spawn()
    code = yield second.ended
    assert code != 0
    assert (f"gateway: cannot listen on tcp:{admin}:interface=127.0.0.1 (admin): Address already in use;"
            f" a gateway may already be running (stop it, or, to run a second one, change [admin] listen in"
            f" {second.config_path})") in second.output
    assert "Traceback" not in second.output
    status, _ = yield first.api("GET", "/healthz")  # the first one is untouched
    assert status == 200
    assert (yield first.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_a_store_that_cannot_be_opened_stops_the_daemon_with_status_1(processes, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    admin = free_port()
    config = GatewayProcess.config(admin).replace(
        'url = "sqlite:var/gateway.sqlite"', f'url = "sqlite:{blocker}/gateway.sqlite"'
    )
    proc = _gateway(processes, tmp_path, config)
    proc.spawn()
    timer = reactor.callLater(30, proc.kill)
    code = yield proc.ended
    if timer.active():
        timer.cancel()
    assert code == 1, proc.output
    assert "the store could not be opened" in proc.output
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", admin)) != 0


@pytest_twisted.inlineCallbacks
def test_health_api_token_and_sigterm(processes, tmp_path):
    admin = free_port()
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin))
    yield proc.start(admin)
    code, body = yield proc.api("GET", "/healthz", token=None)
    assert (code, body) == (200, {"status": "ok"})
    code, body = yield proc.api("GET", "/api/cdrs", token=None)
    assert code == 401 and body["error"]
    code, body = yield proc.api("GET", "/api/cdrs", token="wrong")
    assert code == 401
    code, body = yield proc.api("GET", "/api/cdrs")
    assert (code, body) == (200, {"cdrs": []})
    code, _ = yield proc.api("GET", "/api/nowhere")
    assert code == 404
    exit_code = yield proc.stop()
    assert exit_code == 0, proc.output
    assert "gateway stopped" in proc.output


@pytest_twisted.inlineCallbacks
def test_twist_runs_the_gateway_too(processes, tmp_path):
    admin = free_port()
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin), runner="twist")
    yield proc.start(admin)
    code, body = yield proc.api("GET", "/api/cdrs")
    assert (code, body) == (200, {"cdrs": []})
    assert (yield proc.stop()) == 0, proc.output
    assert "gateway stopped" in proc.output


@pytest_twisted.inlineCallbacks
def test_generated_admin_token_is_private_and_logged_by_path_only(processes, tmp_path):
    admin = free_port()
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin, token=""))
    yield proc.start(admin)
    token_file = tmp_path / "var" / "admin-token"
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    code, _ = yield proc.api("GET", "/api/cdrs", token=token)
    assert code == 200
    assert str(token_file) in proc.output or "admin-token" in proc.output
    assert token not in proc.output
    assert (yield proc.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_secrets_never_appear_in_the_log(processes, tmp_path):
    admin = free_port()
    secrets = ["adm1n-t0ken-s3cret", "pw-bridge-s3cret", "desktop-api-k3y"]
    extra = (
        "[[extensions]]\nid = '1001'\n\n"
        f"[patriot.bridge]\nlisten = 'tcp:{free_port()}:interface=127.0.0.1'\n"
        f"users = [{{username = 'op', password = '{secrets[1]}', extension = '1001'}}]\n"
    )
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin, extra, token=secrets[0]),
                    args=["--logger", "gateway.logs.json_lines"])
    yield proc.start(admin)
    yield proc.api("GET", "/api/cdrs", token="wrong-token")
    yield proc.api("GET", "/api/cdrs", token=secrets[0])
    yield proc.api("POST", "/api/calls", {"extension": "nope", "number": "1"}, token=secrets[0])
    assert (yield proc.stop()) == 0
    for secret in secrets:
        assert secret not in proc.output
    assert '"level"' in proc.output  # the JSON-lines logger was in use


class _NotifyReceiver:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    @defer.inlineCallbacks
    def wait_for(self, needle, timeout=20):
        for _ in range(int(timeout / 0.05)):
            if any(needle in m for m in self.drain()):
                return self.messages
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"{needle!r} not received; got {self.messages}")


@pytest_twisted.inlineCallbacks
def test_systemd_notify_ready_watchdog_stopping(processes, tmp_path):
    receiver = _NotifyReceiver(str(tmp_path / "notify.sock"))
    try:
        admin = free_port()
        proc = _gateway(processes, tmp_path, GatewayProcess.config(admin),
                        env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
        proc.spawn()
        yield receiver.wait_for("READY=1")
        with socket.create_connection(("127.0.0.1", admin), timeout=5):
            pass  # READY came only once the listener was bound
        yield receiver.wait_for("WATCHDOG=1")
        assert (yield proc.stop()) == 0
        messages = yield receiver.wait_for("STOPPING=1")
        assert messages.index(next(m for m in messages if "READY=1" in m)) < len(messages) - 1
    finally:
        receiver.sock.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed on this machine")
@pytest_twisted.inlineCallbacks
def test_socket_activation(processes, tmp_path):
    port = free_port()
    config = GatewayProcess.config(port).replace(
        f'listen = "tcp:{port}:interface=127.0.0.1"', 'listen = "systemd:domain=INET:index=0"'
    )
    proc = _gateway(processes, tmp_path, config)
    # --fdname: systemd (>= 227) always passes LISTEN_FDNAMES, and Twisted
    # ignores inherited sockets without it.
    proc.spawn(wrapper=["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=admin"])
    proc.admin_port = port
    # The socket is open before the daemon runs: the first request starts it.
    code = body = None
    for _ in range(200):
        assert not proc.ended.called, f"the daemon exited:\n{proc.output}"
        try:
            code, body = yield proc.api("GET", "/healthz", token=None)
            break
        except Exception:
            yield deferLater(reactor, 0.1, lambda: None)
    assert (code, body) == (200, {"status": "ok"})
    assert (yield proc.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_acknowledged_cdr_survives_kill_9(processes, tmp_path):
    admin = free_port()
    extra = "[[extensions]]\nid = '1001'\n\n[pbx.sim]\nphone_answer_delay = 0.1\nring_time = 0.1\n"
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin, extra))
    yield proc.start(admin)
    code, call = yield proc.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    assert code == 201, call
    call_id = call["call_id"]
    for _ in range(100):
        _, body = yield proc.api("GET", f"/api/calls/{call_id}")
        if body["state"] == "TALKING":
            break
        yield deferLater(reactor, 0.05, lambda: None)
    yield proc.api("POST", f"/api/calls/{call_id}/hangup", {}, expect=200)
    for _ in range(100):
        _, cdrs = yield proc.api("GET", "/api/cdrs")
        if any(c["call_id"] == call_id for c in cdrs["cdrs"]):
            break
        yield deferLater(reactor, 0.05, lambda: None)
    else:
        raise AssertionError(f"CDR for {call_id} never acknowledged")
    proc.kill()
    assert (yield proc.ended) == -9
    again = _gateway(processes, tmp_path, None)
    again.config_path = proc.config_path
    yield again.start(admin)
    _, cdrs = yield again.api("GET", "/api/cdrs")
    assert [c["cause"] for c in cdrs["cdrs"] if c["call_id"] == call_id] == ["normal"]
    assert (yield again.stop()) == 0


@pytest_twisted.inlineCallbacks
def test_readyz_says_why_a_link_is_down(processes, tmp_path):
    """Issue 12: a link to a closed port is 'connection refused; retry N in S s' on /readyz, not 'not started'.

    The [chat] and [cti] sections say no `enabled`: present means on.
    """
    admin, chat, his, desktop = free_port(), free_port(), free_port(), free_port()
    proc = _gateway(processes, tmp_path, GatewayProcess.config(admin, (
        f'[chat]\nurl = "http://127.0.0.1:{chat}"\nreconnect_initial = 0.2\nreconnect_max = 0.4\n\n'
        f'[cti]\nconnect = "tcp:host=127.0.0.1:port={his}"\nreconnect_initial = 0.2\nreconnect_max = 0.4\n\n'
        '[[extensions]]\nid = "1001"\n\n'
        f'[[patriot.desktop]]\nurl = "ws://127.0.0.1:{desktop}/ws/dialler/v1"\napi_key = "k"\nextension = "1001"\n'
        'retry_initial = 0.2\nretry_max = 0.4\n'
    )))
    yield proc.start(admin)
    assert ("adapters: optimaccs off (no [optimaccs] section), patriot on (bridge off, 1 desktop link), cti on,"
            " chat on") in proc.output
    deadline = reactor.seconds() + 20
    while True:
        code, body = yield proc.api("GET", "/readyz")
        reasons = body.get("not_ready", {})
        links = ("chat", "cti:PROC", "patriot-desktop:0")
        if all("; retry " in reasons.get(name, "") for name in links) or reactor.seconds() > deadline:
            break
        yield deferLater(reactor, 0.1, lambda: None)
    assert code == 503
    assert re.fullmatch(rf"connecting to 127\.0\.0\.1:{chat}: connection refused; retry \d+ in \d+(\.\d)? s", reasons["chat"]), reasons
    assert re.fullmatch(rf"connecting to 127\.0\.0\.1:{his}: connection refused; retry \d+ in \d+(\.\d)? s", reasons["cti:PROC"]), reasons
    yield proc.wait_for_output(f"chat: cannot connect to 127.0.0.1:{chat}: connection refused (attempt 1)")
    assert re.fullmatch(rf"connecting to 127\.0\.0\.1:{desktop}: connection refused; retry \d+ in \d+(\.\d)? s",
                        reasons["patriot-desktop:0"]), reasons
    yield proc.wait_for_output(f"cti: cannot connect to 127.0.0.1:{his}: connection refused (attempt 1)")
    yield proc.wait_for_output(f"Patriot desktop link 0: cannot connect to 127.0.0.1:{desktop}: connection refused (attempt 1)")
    assert (yield proc.stop()) == 0
