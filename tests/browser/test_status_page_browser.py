"""The status page in headless Chromium (Debian's, driven by Selenium and chromedriver) against the real daemon.

A person's view: log in with the admin token, watch a call placed through the
admin API appear with its legs and state, hang it up, watch it leave the live
calls and its CDR appear. Then ``make demo`` as a newcomer sees it: the page
shows every adapter's panel filled by the demo's scenario, and Ctrl-C ends the
demo cleanly. Screenshots go to the ``artifacts_dir``.

Chromium comes from Debian (``make browser`` installs ``chromium`` and
``chromium-driver`` when run as root); the test is skipped, saying so, only
when they are not on the machine.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from gateway.sim.his import HisBridgeSim
from gateway.testing import TOKEN, GatewayProcess, free_port

pytestmark = pytest.mark.timeout(120)

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1920,1080",
)
#: seconds a page has to show what the test waits for
WAIT = 20

CONFIG = """
[pbx.sim]
phone_answer_delay = 0.3
ring_time = 0.5

[[extensions]]
id = "1001"
name = "Alice"

[[extensions]]
id = "1002"
name = "Bob"

[[routes]]
did = "100"
to = "extension:1002"

[patriot.bridge]
listen = "tcp:{patriot}:interface=127.0.0.1"

[optimaccs]
listen = "tcp:{optimaccs}:interface=127.0.0.1"
allow_from = ["127.0.0.1"]
"""


def _chromium(tmp_path, window_size=None):
    """A fresh headless Chromium with its own profile (and window size, as ``--window-size=W,H``)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"Chromium is not installed ({', '.join(missing)} missing): "
                    "`make browser` installs Debian's chromium and chromium-driver as root")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: it belongs to the test extra (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    if window_size is not None:
        options.add_argument(f"--window-size={window_size}")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path):
    """A fresh headless Chromium with its own profile, quit at teardown."""
    driver = _chromium(tmp_path)
    yield driver
    driver.quit()


@pytest.fixture
def phone_browser(tmp_path):
    """Headless Chromium at a phone's width: 420 x 900 CSS pixels. Chromium keeps a window at least 500 px
    wide whatever ``--window-size`` says, so the viewport is set to 420 px through DevTools as well."""
    driver = _chromium(tmp_path, "420,900")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 420, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


@pytest.fixture
def daemon(tmp_path):
    """The gateway on free loopback ports; killed at teardown if the test did not stop it."""
    admin = free_port()
    config = GatewayProcess.config(admin, CONFIG.format(patriot=free_port(), optimaccs=free_port()))
    proc = GatewayProcess(reactor, tmp_path, config)
    proc.admin_port = admin
    yield proc
    proc.kill()


class StatusPage:
    """What a person does and sees on the page (blocking Selenium calls: run them in a thread)."""

    def __init__(self, driver, url):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as seen
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        self.url = url
        self.By = By
        self.seen = seen
        self.wait = WebDriverWait(driver, WAIT)

    def find(self, css):
        return self.driver.find_element(self.By.CSS_SELECTOR, css)

    def visible(self, css):
        return self.wait.until(self.seen.visibility_of_element_located((self.By.CSS_SELECTOR, css)))

    def text_in(self, css, text):
        """The text of ``css`` once it holds ``text``, read in the same look (the page re-renders on every event)."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        def holding(driver):
            try:
                found = self.find(css).text
            except (NoSuchElementException, StaleElementReferenceException):
                return False
            return found if text in found else False

        return self.wait.until(holding)

    def log_in(self, token):
        self.driver.get(self.url)
        self.visible("#token").send_keys(token)
        self.find("#login-button").click()

    def refused_message(self):
        return self.text_in("#login-error", "refused")

    def wait_live(self):
        self.visible("#board")
        return self.text_in("#link", "live")

    def wait_lost(self):
        """The page says it has lost the gateway ("reconnecting", then "unreachable" while it is down)."""
        self.wait.until(lambda d: "lost" in self.find("#link").get_attribute("class").split())
        return self.find("#link").text

    def call_card(self, call_id, state):
        return self.text_in(f'article.call[data-call-id="{call_id}"]', state)

    def wait_call_gone(self, call_id):
        self.wait.until(lambda d: not d.find_elements(self.By.CSS_SELECTOR, f'article.call[data-call-id="{call_id}"]'))
        return self.find("#calls").text

    def cdr_row(self, call_id):
        return self.visible(f'#cdrs tr[data-call-id="{call_id}"]').text

    def storage(self):
        return self.driver.execute_script(
            "return [Object.keys(sessionStorage), Object.keys(localStorage), document.cookie, location.href]")

    def screenshot(self, path):
        assert self.driver.save_screenshot(str(path)), path

    def widths(self):
        """(the page's scrollable width, the viewport's width), in CSS pixels."""
        return self.driver.execute_script(
            "return [document.scrollingElement.scrollWidth, window.innerWidth]")


@pytest_twisted.inlineCallbacks
def test_a_call_appears_on_the_page_and_leaves_it_for_the_cdrs(daemon, browser, artifacts_dir):
    yield daemon.start()
    page = StatusPage(browser, f"http://127.0.0.1:{daemon.admin_port}/")

    yield threads.deferToThread(page.log_in, "not-the-token")
    assert "refused" in (yield threads.deferToThread(page.refused_message))
    yield threads.deferToThread(page.log_in, TOKEN)
    yield threads.deferToThread(page.wait_live)
    keys, local_keys, cookies, href = yield threads.deferToThread(page.storage)
    assert (keys, local_keys, cookies) == (["gateway.admin.token"], [], "")
    assert TOKEN not in href and href.endswith("/status/")

    code, call = yield daemon.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    assert code == 201
    code, inbound = yield daemon.api("POST", "/api/sim/inbound", {"caller_id": "+4930123456", "did": "100"})
    assert code == 201
    card = yield threads.deferToThread(page.call_card, call["call_id"], "TALKING")
    assert "1001" in card and "5551234" in card and "ext 1001 · Alice" in card
    assert "PHONE" in card.upper() and "PARTY" in card.upper()
    inbound_card = yield threads.deferToThread(page.call_card, inbound["call_id"], "TALKING")
    assert "+4930123456" in inbound_card and "ext 1002 · Bob" in inbound_card
    yield threads.deferToThread(page.screenshot, artifacts_dir / "status-page-live-calls.png")

    code, _ = yield daemon.api("POST", f"/api/calls/{call['call_id']}/hangup")
    assert code == 200
    remaining = yield threads.deferToThread(page.wait_call_gone, call["call_id"])
    assert "+4930123456" in remaining, "the other call stays"
    row = yield threads.deferToThread(page.cdr_row, call["call_id"])
    assert "5551234" in row and "normal" in row and "api" in row
    yield threads.deferToThread(page.screenshot, artifacts_dir / "status-page.png")

    assert TOKEN not in daemon.output
    assert (yield daemon.stop()) == 0, daemon.output


@pytest_twisted.inlineCallbacks
def test_a_consult_call_is_shown_linked_to_its_primary(daemon, browser, artifacts_dir):
    yield daemon.start()
    page = StatusPage(browser, f"http://127.0.0.1:{daemon.admin_port}/")
    yield threads.deferToThread(page.log_in, TOKEN)
    yield threads.deferToThread(page.wait_live)
    code, other = yield daemon.api("POST", "/api/sim/inbound", {"caller_id": "+4930123456", "did": "100"})
    code, primary = yield daemon.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    yield threads.deferToThread(page.call_card, primary["call_id"], "TALKING")
    code, consult = yield daemon.api("POST", f"/api/calls/{primary['call_id']}/consult", {"number": "5552222"})
    assert code == 201, consult
    card = yield threads.deferToThread(page.call_card, consult["call_id"], f"consult of call {primary['call_id']}")
    assert "5552222" in card
    held = yield threads.deferToThread(page.call_card, primary["call_id"], "HELD")
    assert f"consulting in call {consult['call_id']}" in held
    order = yield threads.deferToThread(
        lambda: [e.get_attribute("data-call-id") for e in browser.find_elements(page.By.CSS_SELECTOR, "article.call")])
    assert order.index(consult["call_id"]) == order.index(primary["call_id"]) + 1, "listed after its primary"
    assert other["call_id"] in order
    yield threads.deferToThread(page.screenshot, artifacts_dir / "status-page-consult.png")

    yield threads.deferToThread(page.call_card, consult["call_id"], "TALKING")  # answered: it can take the transfer
    code, body = yield daemon.api("POST", f"/api/calls/{primary['call_id']}/transfer-to-consult")
    assert code == 200, body
    yield threads.deferToThread(page.wait_call_gone, consult["call_id"])
    yield threads.deferToThread(page.wait_call_gone, primary["call_id"])
    assert (yield daemon.stop()) == 0, daemon.output


@pytest_twisted.inlineCallbacks
def test_the_page_reconnects_with_a_fresh_ticket_when_the_gateway_restarts(daemon, browser):
    yield daemon.start()
    page = StatusPage(browser, f"http://127.0.0.1:{daemon.admin_port}/status/")
    yield threads.deferToThread(page.log_in, TOKEN)
    yield threads.deferToThread(page.wait_live)

    assert (yield daemon.stop()) == 0, daemon.output
    assert (yield threads.deferToThread(page.wait_lost)) in ("reconnecting…", "gateway unreachable")
    yield daemon.start()
    yield threads.deferToThread(page.wait_live)
    code, call = yield daemon.api("POST", "/api/calls", {"extension": "1001", "number": "5551234"})
    assert code == 201
    yield threads.deferToThread(page.call_card, call["call_id"], "TALKING")
    assert "status stream refused" not in daemon.output, "the page reused a spent ticket"
    assert (yield daemon.stop()) == 0, daemon.output


@pytest.fixture
def demo(tmp_path):
    """``python -m gateway.demo`` (staying up) in its own process group; the group is killed at teardown."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway.demo", "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_demo_shows_every_adapter_on_the_status_page_and_stops_on_ctrl_c(demo, browser, artifacts_dir):
    """``make demo``'s promise: after the scenario it stays up, prints the page's URL and token, and the page
    shows the HIS agent, the Patriot operator and the chat conversation it made; Ctrl-C ends it all."""
    out = []
    for line in demo.stdout:  # the test's timeout bounds this
        out.append(line)
        if "status page" in line:
            break
    text = "".join(out)
    assert "demo: every step happened." in text, text
    url, admin, token = re.search(r"status page\s+(http://127\.0\.0\.1:(\d+)/)\s+\(admin token: (\S+)\)", text).groups()
    chat = re.search(r"chat server simulator listening on 127\.0\.0\.1:(\d+)", text).group(1)

    page = StatusPage(browser, url)
    page.log_in(token)
    page.wait_live()
    assert "alice" in page.text_in("#cti", "bridge linked")
    assert "operator1" in page.text_in("#patriot", "ext 2001")
    assert "+15550142" in page.text_in("#chat", "chat linked")
    assert "status unavailable" not in page.find("#board").text, "every section was drawn"
    page.screenshot(artifacts_dir / "status-page-demo.png")

    os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the demo's whole process group
    rest, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, text + rest
    for port in (admin, chat):  # the daemon and the chat server simulator are gone
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(port))) != 0, port


AGENT_CONFIG = """
[[extensions]]
id = "1003"
name = "Alice"
device = "sim:manual"

[[routes]]
did = "103"
to = "extension:1003"

[cti]
enabled = true
connect = "tcp:host=127.0.0.1:port={his}"
reconnect_initial = 0.5
agents = [{{agent = "alice", extension = "1003"}}]
"""


@pytest_twisted.inlineCallbacks
def test_on_a_phone_the_page_fits_and_says_each_agents_state_and_live_interactions(phone_browser, tmp_path,
                                                                                   artifacts_dir):
    """At 420 px nothing scrolls sideways; an agent's state is written beside its dot; the agent's
    interactions count follows the calls as they come and go (pushed by the feed, not stuck at what the
    desktop has not disposed yet)."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    his = HisBridgeSim(reactor, agents=["alice"])
    port = yield his.listen(TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    admin = free_port()
    (tmp_path / "gateway").mkdir()
    daemon = GatewayProcess(reactor, tmp_path / "gateway", GatewayProcess.config(
        admin, AGENT_CONFIG.format(his=port.getHost().port)))
    try:
        yield daemon.start(admin)
        yield his.when_ready()
        page = StatusPage(phone_browser, f"http://127.0.0.1:{admin}/")
        yield threads.deferToThread(page.log_in, TOKEN)
        yield threads.deferToThread(page.wait_live)
        agent = yield threads.deferToThread(page.text_in, "#cti", "0 live")
        assert "alice" in agent and "not ready" in agent and "0 calls" in agent, agent

        code, call = yield daemon.api("POST", "/api/sim/inbound", {"caller_id": "+4930123456", "did": "103"})
        assert code == 201, call
        yield threads.deferToThread(page.call_card, call["call_id"], "RINGING")
        agent = yield threads.deferToThread(page.text_in, "#cti", "1 live")
        assert "1 call" in agent, agent
        yield his.send("ready")
        word = yield threads.deferToThread(lambda: page.visible("#cti .agent .state-word.up").text)
        assert word == "ready"
        assert "not ready" not in page.find("#cti").text
        scroll_width, inner_width = yield threads.deferToThread(page.widths)
        assert inner_width <= 420 and scroll_width <= inner_width, (scroll_width, inner_width)
        yield threads.deferToThread(page.screenshot, artifacts_dir / "status-page-phone.png")

        code, _ = yield daemon.api("POST", f"/api/calls/{call['call_id']}/hangup")
        assert code == 200
        yield threads.deferToThread(page.cdr_row, call["call_id"])
        agent = yield threads.deferToThread(page.text_in, "#cti", "0 live")
        assert "0 calls" in agent, agent
        scroll_width, inner_width = yield threads.deferToThread(page.widths)
        assert scroll_width <= inner_width, ("with a recent call listed", scroll_width, inner_width)
        yield threads.deferToThread(page.screenshot, artifacts_dir / "status-page-phone-cdrs.png")
        assert (yield daemon.stop()) == 0, daemon.output
    finally:
        daemon.kill()
        yield port.stopListening()


@pytest.fixture
def cluster_demo(tmp_path):
    """``python -m gateway.demo_cluster`` (staying up) in its own process group; killed at teardown."""
    from tests.engines import postgres_bindir, redis_binary

    try:
        redis_binary()
        postgres_bindir()
    except Exception as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"{e} (make engines installs them)")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.demo_cluster", "--workdir", str(tmp_path / "cluster")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_the_cluster_demo_shows_the_nodes_and_each_calls_node(cluster_demo, browser, artifacts_dir):
    """``make cluster-demo``: node-b's status page lists both nodes and the chat link's holder, and a call
    placed on node-a shows there naming node-a."""
    import json
    import urllib.request

    out = []
    for line in cluster_demo.stdout:  # the test's timeout bounds this
        out.append(line)
        if "status pages" in line:
            break
    text = "".join(out)
    assert "cluster demo: every step happened." in text, text
    url_a, url_b, token = re.search(r"status pages\s+(\S+)\s+(\S+)\s+\(admin token: (\S+)\)", text).groups()

    page = StatusPage(browser, url_b)
    page.log_in(token)
    page.wait_live()
    nodes = page.text_in("#cluster", "node-a")
    assert "node-b" in nodes and "(this node)" in nodes and "serving" in nodes and "chat" in nodes, nodes
    request = urllib.request.Request(url_a + "api/sim/inbound", method="POST",
                                     data=json.dumps({"caller_id": "5550111", "did": "0215550100"}).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        call_id = json.loads(response.read())["call_id"]
    assert "node node-a" in page.text_in(f'article.call[data-call-id="{call_id}"]', "node node-a")
    page.screenshot(artifacts_dir / "status-page-cluster.png")

    cluster_demo.send_signal(signal.SIGTERM)
    rest, _ = cluster_demo.communicate(timeout=60)
    assert cluster_demo.returncode == 0, text + rest
