"""``gatewayctl``: where it finds the daemon and its token, and every command against the real daemon.

The daemon (one per module, logging to a file) runs as ``twistd -n gateway`` on loopback with the
chat connector enabled toward a port where nothing listens: SMS are stored and wait, and the status
shows the daemon not ready. ``gatewayctl`` itself is synchronous: the tests call its ``main`` and
read what it printed; one runs the installed console script.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from gateway import ctl
from gateway.config import load, loads
from gateway.sim.tlsutil import generate_self_signed
from gateway.testing import GatewayProcess, free_port

pytestmark = pytest.mark.timeout(60)

EXTRA = """
[[extensions]]
id = "1001"

[pbx.sim]
phone_answer_delay = 0.2
ring_time = 0.2
audio = "silence"

[chat]
enabled = true
url = "http://127.0.0.1:{chat_port}"
"""


# -- unit tests ------------------------------------------------------------------------------


class AdminUrlTests(SynchronousTestCase):
    def test_tcp_with_an_interface(self):
        self.assertEqual(ctl.admin_url("tcp:8080:interface=127.0.0.1"), "http://127.0.0.1:8080")

    def test_every_interface_is_reached_on_loopback(self):
        self.assertEqual(ctl.admin_url("tcp:port=9000"), "http://127.0.0.1:9000")
        self.assertEqual(ctl.admin_url("tcp:9000:interface=0.0.0.0"), "http://127.0.0.1:9000")
        self.assertEqual(ctl.admin_url(r"tcp6:9000:interface=\:\:"), "http://[::1]:9000")

    def test_ipv6_interface_in_brackets(self):
        self.assertEqual(ctl.admin_url(r"tcp6:9000:interface=\:\:1"), "http://[::1]:9000")

    def test_tls_listener_is_https(self):
        certificate = generate_self_signed("localhost")
        directory = self.mktemp()
        os.makedirs(directory)
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        with open(key, "wb") as f:
            f.write(certificate.key_pem)
        with open(cert, "wb") as f:
            f.write(certificate.cert_pem)
        self.assertEqual(ctl.admin_url(f"ssl:8443:privateKey={key}:certKey={cert}"), "https://127.0.0.1:8443")

    def test_an_endpoint_without_a_port_asks_for_url(self):
        for listen in ("unix:/run/gateway.sock", "systemd:domain=INET:index=0"):
            with self.assertRaises(ctl.CtlError) as raised:
                ctl.admin_url(listen)
            self.assertEqual(raised.exception.status, ctl.EXIT_USAGE)
            self.assertIn("give --url", str(raised.exception))


class AdminTokenTests(SynchronousTestCase):
    def config(self, token=""):
        self.state_dir = self.mktemp()
        return loads(f'[gateway]\nstate_dir = "{self.state_dir}"\n[admin]\ntoken = "{token}"\n', "test")

    def test_the_configured_token_wins(self):
        self.assertEqual(ctl.admin_token(self.config("s3cret")), "s3cret")

    def test_else_the_generated_token_file(self):
        config = self.config()
        os.makedirs(self.state_dir)
        with open(os.path.join(self.state_dir, "admin-token"), "w") as f:
            f.write("from-the-file\n")
        self.assertEqual(ctl.admin_token(config), "from-the-file")

    def test_no_token_anywhere_names_the_file(self):
        config = self.config()
        with self.assertRaises(ctl.CtlError) as raised:
            ctl.admin_token(config)
        self.assertEqual(raised.exception.status, ctl.EXIT_USAGE)
        self.assertIn(os.path.join(self.state_dir, "admin-token"), str(raised.exception))


class _NotFound:
    def call(self, method, path, body=None, **kw):
        raise ctl.CtlError("not found: no such path", ctl.EXIT_NOT_FOUND)


class RenderingTests(SynchronousTestCase):
    def test_table_aligns_columns_and_marks_empty_cells(self):
        self.assertEqual(ctl.table(["A", "LONGER"], [["xyz", None], ["", 7]]),
                         "A    LONGER\nxyz  -\n-    7")

    def test_no_sms_route_says_the_chat_connector_is_off(self):
        args = type("Args", (), {"number": "1", "text": "t"})()
        for command in ("sms send", "sms receive"):
            with self.assertRaises(ctl.CtlError) as raised:
                ctl.COMMANDS[command][1](_NotFound(), args)
            self.assertEqual(raised.exception.status, ctl.EXIT_NOT_FOUND)
            self.assertIn("[chat]", str(raised.exception))

    def test_status_lists_what_is_not_ready(self):
        text = ctl.render_status({
            "readiness": {"ready": False, "not_ready": {"chat": "not connected"}},
            "node": "gw", "version": "1.0",
            "patriot": {"sessions": [{"user": "op", "extension": "1001"}], "up": True},
        })
        self.assertEqual(text.splitlines(), [
            "gateway gw 1.0: NOT READY", "  chat: not connected", "patriot:", "  sessions:",
            "    USER  EXTENSION", "    op    1001", "  up: yes",
        ])


    def test_status_lists_which_adapters_run_and_which_are_off(self):
        text = ctl.render_status({
            "readiness": {"ready": True}, "node": "gw", "version": "1.0",
            "adapters": {"optimaccs": "on", "chat": "off (enabled = false)"},
        })
        self.assertEqual(text.splitlines(), [
            "gateway gw 1.0: ready", "adapters:", "  optimaccs: on", "  chat: off (enabled = false)",
        ])

    def test_cluster_lists_nodes_load_draining_and_lease_holders(self):
        text = ctl.render_cluster({
            "cluster": True, "node": "a", "redis": "up", "joined": True,
            "nodes": [
                {"node": "a", "self": True, "draining": False, "load": {"calls": 2.0}, "leases": ["chat", "cti:his"],
                 "meta": {"admin": "tcp:8081"}},
                {"node": "b", "self": False, "draining": True, "load": {"calls": 0.0}, "leases": [], "meta": {}},
            ],
            "leases": [{"name": "chat", "holder": "a", "token": 7, "ttl_ms": 4200},
                       {"name": "cti:his", "holder": "a", "token": 3, "ttl_ms": 900}],
            "draining": ["b"],
        })
        self.assertEqual(text.splitlines(), [
            "cluster: node a sees 2 live node(s); redis up",
            "NODE  STATE     LOAD     LEASES         ADMIN",
            "a *   serving   2 calls  chat, cti:his  tcp:8081",
            "b     draining  0 calls  -              -",
            "",
            "LEASE    HOLDER  TOKEN  TTL",
            "chat     a       7      4.2s",
            "cti:his  a       3      0.9s",
        ])
        self.assertEqual(ctl.render_cluster({"cluster": False, "node": "solo"}),
                         "cluster: off (node solo runs alone: no [cluster] table)")

    def test_calls_name_their_node_in_cluster_mode(self):
        call = {"call_id": "c1", "extension": "1001", "direction": "inbound", "state": "TALKING", "caller": "555",
                "number": "100", "parties": [], "duration": 5}
        self.assertNotIn("NODE", ctl.render_calls({"calls": [call]}))
        self.assertEqual(ctl.render_calls({"calls": [{**call, "node": "b"}]}).splitlines()[1].split()[-1], "b")

    def test_help_says_what_exit_5_means(self):
        help_text = ctl._parser().format_help()
        self.assertIn("5 not found (no such call, extension or CDR, or the adapter the command needs is off)",
                      " ".join(help_text.split()))


# -- against the real daemon -----------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The daemon, its configuration file, and a generated token kept in its state directory."""
    workdir = tmp_path_factory.mktemp("ctl")
    admin = free_port()
    config = GatewayProcess.config(admin, EXTRA.format(chat_port=free_port()), state_dir=str(workdir / "var"),
                                   token="")
    proc = GatewayProcess(reactor, workdir, config, args=["--logfile", str(workdir / "gateway.log")])
    try:
        pytest_twisted.blockon(proc.start(admin))
        yield proc
    finally:
        pytest_twisted.blockon(proc.stop())


def run(capsys, *argv):
    """``gatewayctl argv``: (exit status, stdout, stderr)."""
    status = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_status_shows_readiness_and_the_adapters(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "status")
    assert (status, err) == (0, "")
    assert out.startswith("gateway gateway ")
    assert "NOT READY" in out and "  chat: " in out  # nothing listens where the chat server should be
    assert "\ncalls:\n" in out and "\nchat:\n" in out
    assert ("\nadapters:\n  optimaccs: off (no [optimaccs] section)\n  patriot: off (no [patriot] section)\n"
            "  cti: off (no [cti] section)\n  chat: on\n") in out

    status, out, _ = run(capsys, "status", "--config", daemon.config_path, "--json")
    data = json.loads(out)
    assert status == 0 and data["readiness"]["ready"] is False and "chat" in data["readiness"]["not_ready"]
    assert data["node"] == "gateway" and "calls" in data


def test_dial_calls_call_hangup_and_its_cdr(daemon, capsys):
    config = ("--config", daemon.config_path)
    status, out, err = run(capsys, *config, "dial", "1001", "5550123")
    assert (status, err) == (0, "")
    assert out.startswith("call ") and "ringing extension 1001, then 5550123" in out
    call_id = out.split()[1].rstrip(":")

    status, out, _ = run(capsys, *config, "calls", "--json")
    assert status == 0 and [c["call_id"] for c in json.loads(out)["calls"]] == [call_id]
    status, out, _ = run(capsys, *config, "calls")
    header, row = out.splitlines()
    assert header.split() == ["CALL", "EXT", "DIR", "STATE", "FROM", "TO", "PARTIES", "TIME"]
    assert row.split()[:3] == [call_id, "1001", "outbound"] and "5550123" in row

    status, out, _ = run(capsys, *config, "call", call_id)
    assert status == 0 and f"call:        {call_id}" in out
    assert "LEG" in out and "device" in out

    status, out, _ = run(capsys, *config, "hangup", call_id)
    assert (status, out) == (0, f"call {call_id} hung up: RELEASED, cause normal\n")
    status, out, _ = run(capsys, *config, "call", call_id, "--json")
    assert status == 0 and json.loads(out)["hangup_by"] == "api"

    status, out, _ = run(capsys, *config, "cdrs", "--json")
    (cdr,) = [c for c in json.loads(out)["cdrs"] if c["call_id"] == call_id]
    assert (cdr["cause"], cdr["extension"]) == ("normal", "1001")
    status, out, _ = run(capsys, *config, "cdrs", "--limit", "5")
    assert status == 0 and out.splitlines()[0].split()[:3] == ["CALL", "STARTED", "EXT"]
    assert any(line.startswith(call_id) and "normal" in line for line in out.splitlines())


def wait_for_state(capsys, config, call_id, state, timeout=10.0):
    """The call's JSON once it is in ``state`` (the daemon's simulated parties answer within 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        status, out, _ = run(capsys, *config, "call", call_id, "--json")
        call = json.loads(out)
        if call["state"] == state or time.monotonic() > deadline:
            assert (status, call["state"]) == (0, state)
            return call
        time.sleep(0.05)


def test_consult_alternate_conference_and_transfer_to_consult(daemon, capsys):
    config = ("--config", daemon.config_path)

    def consulting(number, consulted):
        status, out, _ = run(capsys, *config, "dial", "1001", number)
        primary = out.split()[1].rstrip(":")
        wait_for_state(capsys, config, primary, "TALKING")
        status, out, err = run(capsys, *config, "consult", primary, consulted)
        assert (status, err) == (0, "")
        consult = out.split()[1].rstrip(":")
        assert out == (f"call {consult}: consulting {consulted} for extension 1001, call {primary} held"
                       " (state DIALING)\n")
        wait_for_state(capsys, config, consult, "TALKING")
        return primary, consult

    primary, consult = consulting("5550124", "5550125")
    status, out, _ = run(capsys, *config, "call", primary)
    assert "state:       HELD" in out and f"consult:     {consult}" in out
    status, out, _ = run(capsys, *config, "call", consult)
    assert f"consult of:  {primary}" in out
    assert run(capsys, *config, "alternate", primary)[:2] == (0, f"call {primary}: TALKING\n")
    assert run(capsys, *config, "alternate", consult)[:2] == (0, f"call {consult}: TALKING\n")
    status, out, _ = run(capsys, *config, "conference-in-consult", primary)
    assert (status, out) == (0, f"call {primary}: conference of 5550124 TALKING, 5550125 TALKING (state TALKING)\n")
    status, out, err = run(capsys, *config, "alternate", primary)
    assert status == ctl.EXIT_REFUSED and err.startswith("gatewayctl: refused (409 illegal_state): ")
    run(capsys, *config, "hangup", primary)

    primary, consult = consulting("5550126", "5550127")
    status, out, _ = run(capsys, *config, "transfer-to-consult", consult)
    assert (status, out) == (0, f"call {primary} transferred to its consult: RELEASED, cause transferred\n")
    status, out, _ = run(capsys, *config, "calls", "--json")
    [joined] = json.loads(out)["calls"]
    assert [p["number"] for p in joined["parties"]] == ["5550126", "5550127"]
    assert run(capsys, *config, "hangup", joined["call_id"])[0] == 0
    status, out, _ = run(capsys, *config, "cdrs", "--json")
    cdrs = {c["call_id"]: c for c in json.loads(out)["cdrs"]}
    assert (cdrs[primary]["consults"], cdrs[consult]["consult_of"]) == ([consult], primary)
    for command in ("consult", "alternate", "transfer-to-consult", "conference-in-consult"):
        status, out, err = run(capsys, *config, command, "no-such-call", *(["5550128"] if command == "consult" else []))
        assert (status, err) == (ctl.EXIT_NOT_FOUND, "gatewayctl: not found: no call with id 'no-such-call'\n")


def admin_api(daemon) -> ctl.AdminClient:
    """The daemon's admin API, found as gatewayctl finds it."""
    config = load(daemon.config_path)
    return ctl.AdminClient(ctl.admin_url(config.admin.listen), ctl.admin_token(config))


def test_sms_send_goes_to_the_number_through_the_sms_transport(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "sms", "send", "+15550143", "your code is 1234")
    assert (status, err) == (0, "")
    assert out.startswith("SMS ") and out.endswith(" to +15550143 stored: pending; the chat connector sends it\n")
    uid = out.split()[1]
    sent = admin_api(daemon).call("GET", "/api/sms/sim/sent")["sent"]
    assert [(s["id"], s["to"], s["text"], s["kind"]) for s in sent if s["to"] == "+15550143"] == [
        (uid, "+15550143", "your code is 1234", "operator")]

    status, out, _ = run(capsys, "--config", daemon.config_path, "--json", "sms", "send", "+15550143", "again")
    sms = json.loads(out)["sms"]
    assert status == 0 and (sms["direction"], sms["number"], sms["kind"]) == ("outbound", "+15550143", "operator")
    status, out, err = run(capsys, "--config", daemon.config_path, "sms", "send", "+15550143", "")
    assert (status, out) == (ctl.EXIT_REFUSED, "") and err.startswith("gatewayctl: refused (400 bad_request): ")


def test_sms_receive_is_stored_for_the_chat_connector(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "sms", "receive", "+15550142", "hello there")
    assert (status, err) == (0, "")
    assert out.startswith("SMS ") and out.endswith(" from +15550142 stored: pending; the chat connector delivers it\n")
    uid = out.split()[1]
    stored = admin_api(daemon).call("GET", "/api/sms?number=%2B15550142")["sms"]
    assert [(r["uid"], r["direction"], r["text"]) for r in stored] == [(uid, "inbound", "hello there")]


def test_an_unknown_call_is_exit_5(daemon, capsys):
    for command in ("call", "hangup"):
        status, out, err = run(capsys, "--config", daemon.config_path, command, "no-such-call")
        assert (status, out) == (ctl.EXIT_NOT_FOUND, "")
        assert err == "gatewayctl: not found: no call with id 'no-such-call'\n"


def test_a_refused_command_is_exit_1(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "dial", "9999", "5550123")
    assert (status, err) == (ctl.EXIT_NOT_FOUND, "gatewayctl: not found: no extension with id '9999'\n")
    status, out, err = run(capsys, "--config", daemon.config_path, "cdrs", "--since", "yesterday")
    assert status == ctl.EXIT_REFUSED and err.startswith("gatewayctl: refused (400 bad_request): ")


def test_cluster_and_drain_without_a_cluster(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "cluster")
    assert (status, err) == (ctl.EXIT_OK, "")
    assert out.startswith("cluster: off (node ") and out.endswith(" runs alone: no [cluster] table)\n")
    status, out, err = run(capsys, "--config", daemon.config_path, "drain", "somenode")
    assert (status, out) == (ctl.EXIT_NOT_FOUND, "")
    assert err.startswith("gatewayctl: not found: the cluster is off") and "SIGTERM" in err


def test_a_wrong_token_is_exit_4(daemon, capsys):
    status, out, err = run(capsys, "--config", daemon.config_path, "--token", "wrong", "calls")
    assert (status, out) == (ctl.EXIT_TOKEN, "")
    assert "refused the admin token (401)" in err and len(err.splitlines()) == 1


def test_the_daemon_down_is_exit_3_from_the_console_script(tmp_path):
    gatewayctl = os.path.join(os.path.dirname(sys.executable), "gatewayctl")
    port = free_port()
    done = subprocess.run([gatewayctl, "--url", f"http://127.0.0.1:{port}", "--token", "t", "status"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (ctl.EXIT_DOWN, "")
    assert done.stderr == f"gatewayctl: the gateway is not running at http://127.0.0.1:{port} (connection refused)\n"


def test_no_token_to_be_found_is_exit_2(tmp_path, capsys):
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nstate_dir = "{tmp_path / "var"}"\n')
    status, out, err = run(capsys, "--config", str(config), "calls")
    assert (status, out) == (ctl.EXIT_USAGE, "")
    assert "no admin token" in err and str(tmp_path / "var" / "admin-token") in err


def test_a_bad_configuration_is_exit_2(tmp_path, capsys):
    config = tmp_path / "gateway.toml"
    config.write_text("[admin]\nlisten = 8080\n")
    status, out, err = run(capsys, "--config", str(config), "status")
    assert status == ctl.EXIT_USAGE and err.startswith("gatewayctl: configuration error: ")
    assert "admin.listen" in err
