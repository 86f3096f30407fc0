"""The OptimaCCS connections' transition tables, their shared base, and a silent provider on a task.Clock.

- Both connection kinds move only through their table; every input the code uses is listed there, and an
  illegal transition is logged, counted and refused, never raised.
- A silent provider, inbound and outbound, ends its call with the right cause at the right time, every
  timer (the connection's own and Autobahn's) firing on the injected clock, never on txaio's global one
  (here a decoy clock that must stay empty).
- However a call ends, none of its DelayedCalls is left on the clock.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import re
import struct

import attrs
import txaio
from twisted.internet import defer, protocol, task
from twisted.internet.address import IPv4Address
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from gateway.drivers import optimaccs, optimaccs_out
from gateway.drivers.optimaccs import InboundServer, InboundState, OptimaccsService, _Metrics
from gateway.drivers.optimaccs_link import Machine, Transitions, illegal_counter
from gateway.drivers.optimaccs_out import OutboundState
from gateway.sim.optimaccs import ApiSettings, CallScript

from . import inbound_bench, outbound_bench
from .inbound_bench import ECHO_DID, MANUAL_DID, RecordingTransport
from .support import LogCapture

NUMBER = "6281234567"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLIENT_HANDSHAKE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:4143\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


class RecordingClock:
    """A connection's view of the test's clock: the same time, keeping every DelayedCall made through it."""

    def __init__(self, clock: task.Clock) -> None:
        self._clock = clock
        self.calls = []

    def callLater(self, *args, **kwargs):
        call = self._clock.callLater(*args, **kwargs)
        self.calls.append(call)
        return call

    def seconds(self) -> float:
        return self._clock.seconds()

    def pending(self) -> list:
        return [call for call in self.calls if call.active()]


def text_frame(message: dict, masked: bool) -> bytes:
    """One WebSocket text frame (a client's masked with the zero key, which leaves the payload as it is)."""
    payload = json.dumps(message).encode()
    assert len(payload) < 126
    return bytes([0x81, (0x80 if masked else 0) | len(payload)]) + (b"\0\0\0\0" if masked else b"") + payload


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of every whole WebSocket frame in ``data``, unmasked."""
    found, i = [], 0
    while i + 2 <= len(data):
        size, j = data[i + 1] & 0x7F, i + 2
        if size == 126:
            size, j = struct.unpack(">H", data[j:j + 2])[0], j + 2
        elif size == 127:
            size, j = struct.unpack(">Q", data[j:j + 8])[0], j + 8
        key = None
        if data[i + 1] & 0x80:
            key, j = data[j:j + 4], j + 4
        if j + size > len(data):
            break
        payload = data[j:j + size]
        if key:
            payload = bytes(b ^ key[k % 4] for k, b in enumerate(payload))
        found.append((data[i] & 0x0F, payload))
        i = j + size
    return found


class _Events:
    """An ILegEvents that keeps what it is told."""

    def __init__(self):
        self.told = []

    def __getattr__(self, name):
        return lambda *args: self.told.append((name, *args))


class TransitionTableTests(SynchronousTestCase):
    """Each connection kind has one table, and the code uses no input the table does not list."""

    def used_inputs(self, module) -> set[str]:
        """The inputs the module's code names (its dialStatus values' too), and those of the shared base."""
        used = set(re.findall(r'(?:fire|allows|_leave|_let_go|_end_call)\("(\w+)"', inspect.getsource(module)))
        used |= set(getattr(module, "_DIAL_STATUS", {}).values())
        return used | {"send_dtmf", "dtmf", "cdr"}  # optimaccs_link.ProviderCall's

    def test_every_input_the_code_uses_is_in_its_table(self):
        for module in (optimaccs, optimaccs_out):
            used = self.used_inputs(module)
            self.assertEqual(used - module.TRANSITIONS.inputs, set(), module.__name__)
            self.assertEqual(module.TRANSITIONS.inputs - used, set(), f"{module.__name__}: inputs never used")

    def test_every_state_is_reached_and_the_last_one_is_final(self):
        for table, states, final in ((optimaccs.TRANSITIONS, InboundState, InboundState.CLOSED),
                                     (optimaccs_out.TRANSITIONS, OutboundState, OutboundState.OVER)):
            reached = {target for target in table.table.values()}
            sources = {state for state, _ in table.table}
            self.assertEqual(set(states) - reached - {next(iter(states))}, set(), table.kind)
            self.assertEqual(set(states) - sources, {final}, table.kind)

    def test_the_states_read_as_before(self):
        self.assertEqual([s.value for s in InboundState], ["setup", "live", "ending", "closed"])
        self.assertEqual(optimaccs_out.DIALING, "dialing")
        self.assertEqual(f"{OutboundState.TALKING}", "talking")
        self.assertEqual(json.dumps({"stage": OutboundState.ENDING}), '{"stage": "ending"}')

    def test_an_illegal_transition_is_logged_counted_and_refused_never_raised(self):
        from prometheus_client import CollectorRegistry

        logs = LogCapture(self)
        metrics = CollectorRegistry()
        machine = Machine(Transitions("inbound", {("a", "go"): "b"}), "a", lambda: "OptimaCCS 1.2.3.4:5",
                          illegal_counter(metrics))
        self.assertTrue(machine.fire("go"))
        self.assertFalse(machine.fire("go"))
        self.assertFalse(machine.fire("no such input"))
        self.assertEqual((machine.state, machine.illegal), ("b", 2))
        self.assertEqual(metrics.get_sample_value("gateway_optimaccs_illegal_transitions_total",
                                                  {"connection": "inbound", "state": "b", "input": "go"}), 1)
        self.assertIn("OptimaCCS 1.2.3.4:5: illegal transition 'go' in state b of the inbound connection; refused",
                      logs.text())
        self.assertEqual(logs.tracebacks, [])

    def test_an_illegal_transition_of_one_call_leaves_it_and_the_others_alone(self):
        bench = inbound_bench.Bench(self)
        bystander, _ = bench.connect(CallScript(did=ECHO_DID))
        victim, _ = bench.connect(CallScript(did=MANUAL_DID))
        bench.run(0.3)
        calls = {c.setup.session_id: c for c in bench.server.calls}
        call = calls[victim.session_id]
        self.assertFalse(call._machine.fire("incoming_call"))  # a bug's second incoming_call
        self.assertEqual(call.phase, InboundState.LIVE)
        self.assertEqual(bench.metric("gateway_optimaccs_illegal_transitions_total", connection="inbound",
                                      state="live", input="incoming_call"), 1)
        bench.run(0.5)
        self.assertTrue(bystander.echo().matched)
        self.assertEqual(bench.call_of(victim).state, "RINGING")


class InboundSilentProviderTests(SynchronousTestCase):
    """The provider connects to the gateway and then says nothing."""

    def bench(self, **options):
        bench = inbound_bench.Bench(self, **options)
        self.decoy = txaio.config.loop = task.Clock()  # the Bench's cleanup puts txaio's loop back
        self.clock = RecordingClock(bench.clock)
        bench.server = InboundServer(self.clock, bench.config, bench.h.registry, _Metrics(bench.metrics_registry))
        bench.factory = bench.server.factory(self.clock)
        return bench

    def raw_peer(self, bench):
        """The server protocol and a peer that says only what the test writes (no pong, no close reply)."""
        server = bench.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        peer, _, self.pump = iosim.connectedServerAndClient(
            lambda: server, protocol.Protocol, serverTransportFactory=lambda p: RecordingTransport(p, True),
            clock=bench.clock)
        peer.transport.write(CLIENT_HANDSHAKE)
        self.pump.flush()
        return server, peer

    def advance(self, bench, seconds):
        bench.clock.advance(seconds)
        self.pump.flush()

    def test_no_incoming_call_closes_1008_at_setup_timeout(self):
        bench = self.bench(setup_timeout=7.0)
        server, _ = self.raw_peer(bench)
        (call,) = bench.server.calls
        self.assertEqual(call.timers, ["setup"])
        self.advance(bench, 6.99)
        self.assertIsNone(server.localCloseCode)
        self.advance(bench, 0.01)
        self.assertEqual((server.localCloseCode, server.localCloseReason), (1008, b"no incoming_call within 7 s"))
        self.advance(bench, server.closeHandshakeTimeout)  # the peer never answers the close: dropped
        self.assertEqual((call.phase, bench.server.calls, bench.h.registry.calls(include_released=True)),
                         (InboundState.CLOSED, [], []))
        self.assertEqual(self.clock.pending(), [])
        self.assertEqual(self.decoy.getDelayedCalls(), [])

    def test_silent_after_the_answer_the_ping_timeout_ends_the_call_transport_lost(self):
        bench = self.bench(ping_interval=5.0, ping_timeout=2.0)
        server, peer = self.raw_peer(bench)
        opened = bench.clock.seconds()
        peer.transport.write(text_frame({"event": "incoming_call", "callerId": "0811", "didNumber": ECHO_DID,
                                         "sessionId": "silent-1"}, masked=True))
        self.advance(bench, 0.1)  # routed to the echo app, answered
        (call,) = bench.server.calls
        (snapshot,) = bench.h.registry.calls()
        self.assertEqual((call.phase, call.answered, snapshot.state), (InboundState.LIVE, True, "TALKING"))
        self.advance(bench, opened + 5.0 - bench.clock.seconds())  # a ping goes out (on the injected clock)
        self.assertTrue(server.autoPingPending)
        self.advance(bench, 1.99)  # never answered
        self.assertEqual(call.phase, InboundState.LIVE)
        self.advance(bench, 0.01)
        self.assertTrue(server.transport.disconnecting)
        self.assertEqual(call.phase, InboundState.CLOSED)
        (snapshot,) = bench.h.registry.calls(include_released=True)
        self.assertEqual((snapshot.state, snapshot.cause), ("RELEASED", "transport_lost"))
        self.assertEqual(self.clock.pending(), [])
        self.assertEqual(self.decoy.getDelayedCalls(), [])


class InboundNothingLeftTests(SynchronousTestCase):
    """However an inbound call ends, none of its DelayedCalls is left on the clock."""

    def setUp(self):
        self.bench = inbound_bench.Bench(self, setup_timeout=3.0, cdr_wait=2.0)
        self.clock = RecordingClock(self.bench.clock)
        self.bench.server = InboundServer(self.clock, self.bench.config, self.bench.h.registry,
                                          _Metrics(self.bench.metrics_registry))
        self.bench.factory = self.bench.server.factory(self.clock)

    def assertNothingLeft(self, cause=None):
        self.bench.run(5.0, step=0.05)
        self.assertEqual(self.bench.server.calls, [])
        if cause is not None:
            self.assertEqual([c.cause for c in self.bench.h.registry.calls(include_released=True)], [cause])
        self.assertEqual(self.clock.pending(), [])

    def test_normal(self):
        call, _ = self.bench.connect(CallScript(did=ECHO_DID))
        self.bench.run(0.5)
        self.successResultOf(self.bench.h.registry.hangup(self.bench.call_of(call).call_id))
        self.assertNothingLeft("normal")
        self.assertEqual(call.close_code, 1000)

    def test_normal_without_a_cdr(self):
        call, _ = self.bench.connect(inbound_bench_raw())
        call.send_text(f'{{"event":"incoming_call","callerId":"1","didNumber":"{ECHO_DID}",'
                       f'"sessionId":"{call.session_id}"}}')
        self.bench.run(0.5)
        self.successResultOf(self.bench.h.registry.hangup(self.bench.call_of(call).call_id))
        self.assertNothingLeft("normal")  # closed after cdr_wait, then the close handshake

    def test_remote_hangup(self):
        self.bench.connect(CallScript(did=ECHO_DID, hangup_after=0.5))
        self.assertNothingLeft("remote_hangup")

    def test_transport_lost(self):
        _, server = self.bench.connect(CallScript(did=ECHO_DID))
        self.bench.run(0.5)
        server.transport.loseConnection()
        self.assertNothingLeft("transport_lost")

    def test_setup_timeout(self):
        call, _ = self.bench.connect(inbound_bench_raw())
        self.assertNothingLeft()
        self.assertEqual(call.close_code, 1008)

    def test_shutdown(self):
        call, _ = self.bench.connect(CallScript(did=MANUAL_DID))
        self.bench.run(0.5)
        stopped = OptimaccsService(self.bench.server).stopService()
        self.assertNothingLeft("transport_lost")
        self.successResultOf(stopped)
        self.assertEqual(call.close_code, 1001)


def inbound_bench_raw() -> CallScript:
    return CallScript(did=ECHO_DID, raw=True)


class OutboundSilentProviderTests(SynchronousTestCase):
    """The provider places the call, then says nothing on its media WebSocket (or never opens it)."""

    def setUp(self):
        self.bench = outbound_bench.Bench(self)
        self.decoy = txaio.config.loop = task.Clock()  # the Bench's cleanup puts txaio's loop back
        self.clock = on_recording_clock(self.bench)
        self.bench.driver._connect = self._connect
        self.received = b""

    def _connect(self, url, factory):
        """A media connection to a provider that says only what the test writes (no pong, no close reply)."""
        silent = protocol.Protocol()
        silent.dataReceived = self._received
        client, self.provider, self.pump = iosim.connectedServerAndClient(
            lambda: silent, lambda: factory.buildProtocol(None), clock=self.bench.clock)
        return defer.succeed(client)

    def _received(self, data):
        self.received += data

    def advance(self, seconds):
        self.bench.clock.advance(seconds)
        self.pump.flush()

    def dial(self):
        events = _Events()
        leg = self.bench.driver.dial(NUMBER, events)
        self.bench.clock.advance(0)  # POST /pbx/call, then the media connection
        self.pump.flush()
        self.assertIn(b"GET /ws/", self.received)
        return leg, events

    def open(self, *statuses):
        """Complete the opening handshake, then send ``statuses`` as dialStatus; the time it opened."""
        leg, events = self.dial()
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", self.received).group(1)
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.received = b""
        self.provider.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        for status in statuses:
            self.provider.transport.write(text_frame({"event": "dialStatus", "data": {"status": status}},
                                                     masked=False))
        self.pump.flush()
        return leg, events, self.bench.clock.seconds()

    def sent_events(self) -> list:
        return [json.loads(payload)["event"] for opcode, payload in frames(self.received) if opcode == 1]

    def close_frames(self) -> list:
        return [struct.unpack(">H", payload[:2])[0] for opcode, payload in frames(self.received) if opcode == 8]

    def assertLetGo(self, leg):
        """The gateway closes after cdr_wait; the provider never answers the close: dropped after the closing
        handshake timeout. Nothing of the leg is left on the clock, nothing on txaio's."""
        self.assertEqual(self.close_frames(), [])
        self.advance(self.bench.config.cdr_wait)
        self.assertEqual(self.close_frames(), [1000])
        self.advance(leg._link.protocol.closeHandshakeTimeout)
        self.successResultOf(leg.done)
        self.assertEqual(self.bench.driver.legs, [])
        self.assertEqual(self.clock.pending(), [])
        self.assertEqual(self.decoy.getDelayedCalls(), [])

    def test_the_media_websocket_never_opens(self):
        leg, events = self.dial()
        timeout = self.bench.config.outbound.request_timeout
        self.advance(timeout - 0.01)
        self.assertEqual((leg.stage, events.told), (OutboundState.CONNECTING, []))
        self.advance(0.01)
        ((outcome, reason),) = events.told
        self.assertEqual(outcome, "failed")
        self.assertIn("opening handshake timeout", reason)
        self.assertEqual(self.bench.metric("gateway_optimaccs_outbound_failed_total", kind="media_closed"), 1)
        self.successResultOf(leg.done)
        self.assertEqual(self.bench.provider.requests[-1].path, "/pbx/hangup")
        self.assertEqual(self.clock.pending(), [])
        self.assertEqual(self.decoy.getDelayedCalls(), [])

    def test_no_dialing_fails_the_leg_after_request_timeout(self):
        logs = LogCapture(self)
        leg, events, opened = self.open()
        self.assertEqual((leg.stage, leg.timers), (OutboundState.DIALING, ["answer", "progress"]))
        self.advance(opened + 9.99 - self.bench.clock.seconds())
        self.assertEqual(events.told, [])
        self.advance(0.01)
        self.assertEqual(events.told, [("failed", "the provider sent no dialStatus within 10 s")])
        self.assertEqual(self.bench.metric("gateway_optimaccs_outbound_failed_total", kind="silent"), 1)
        self.assertIn("no dialStatus within 10 s of the media connection opening; hanging up", logs.text())
        self.assertEqual((leg.stage, self.sent_events()), (OutboundState.ENDING, ["hangup"]))
        self.assertLetGo(leg)

    def test_no_connected_ends_the_leg_no_answer_after_ring_timeout_and_request_timeout(self):
        leg, events, opened = self.open("Dialing", "Ringing")
        self.assertEqual(leg.timers, ["answer"])
        wait = self.bench.config.outbound.ring_timeout + self.bench.config.outbound.request_timeout
        self.advance(opened + wait - 0.01 - self.bench.clock.seconds())
        self.assertEqual(events.told, [("ringing",)])
        self.advance(0.01)
        self.assertEqual(events.told, [("ringing",), ("no_answer",)])
        self.assertEqual(self.bench.metric("gateway_optimaccs_outbound_failed_total", kind="silent"), 0)
        self.assertEqual(self.sent_events(), ["hangup"])
        self.assertLetGo(leg)

    def test_connected_in_time_stops_both_guards(self):
        leg, events, _ = self.open("Dialing", "Connected")
        self.assertEqual((leg.stage, leg.timers, events.told), (OutboundState.TALKING, [], [("answered",)]))
        self.advance(100.0)
        self.assertEqual(events.told, [("answered",)])  # no pings configured: a silent call may stay silent
        leg.hangup("normal")
        self.pump.flush()
        self.assertLetGo(leg)

    def test_silent_after_connected_the_ping_timeout_ends_the_leg_transport_lost(self):
        self.bench.driver.config = attrs.evolve(self.bench.config, ping_interval=5.0, ping_timeout=2.0)
        leg, events, opened = self.open("Dialing", "Connected")
        self.advance(opened + 5.0 - self.bench.clock.seconds())  # a ping goes out (on the injected clock)
        self.assertIn(9, [opcode for opcode, _ in frames(self.received)])
        self.advance(1.99)  # never answered
        self.assertEqual(events.told, [("answered",)])
        self.advance(0.01)
        self.assertEqual(events.told, [("answered",), ("hung_up", "transport_lost")])
        self.successResultOf(leg.done)
        self.assertEqual(self.bench.provider.requests[-1].path, "/pbx/hangup")
        self.assertEqual(self.clock.pending(), [])
        self.assertEqual(self.decoy.getDelayedCalls(), [])


def on_recording_clock(bench) -> RecordingClock:
    """Put the bench's outbound driver (its legs, their ports and timers, its requests' timeouts and the
    media WebSockets' Autobahn timers) on a RecordingClock of the bench's clock."""
    clock = RecordingClock(bench.clock)
    bench.driver.clock = clock
    bench.driver.api._clock = clock
    return clock


class OutboundNothingLeftTests(SynchronousTestCase):
    """However an outbound leg ends, none of its DelayedCalls is left on the clock."""

    def setUp(self):
        self.bench = outbound_bench.Bench(self, cdr_wait=2.0)
        self.clock = on_recording_clock(self.bench)

    def assertNothingLeft(self, call_id, cause):
        self.bench.run(4.0, step=0.05)
        if cause is not None:
            self.assertEqual(self.bench.registry.call(call_id).cause, cause)
        self.assertEqual(self.bench.driver.legs, [])
        self.assertEqual(self.clock.pending(), [])

    def test_normal(self):
        call_id = self.bench.talking(NUMBER)
        self.successResultOf(self.bench.registry.hangup(call_id))
        self.assertNothingLeft(call_id, "normal")

    def test_remote_hangup(self):
        self.bench = outbound_bench.Bench(self, ApiSettings(token=outbound_bench.TOKEN, callee_hangup_after=1.0))
        self.clock = on_recording_clock(self.bench)
        call_id = self.bench.talking(NUMBER)
        self.assertNothingLeft(call_id, "remote_hangup")

    def test_busy(self):
        call_id = self.bench.registry.originate("1001", "6281110000").result.call_id
        self.assertNothingLeft(call_id, "busy")

    def test_transport_lost(self):
        call_id = self.bench.talking(NUMBER)
        self.bench.provider_side.loseConnection()
        self.assertNothingLeft(call_id, "transport_lost")

    def test_shutdown(self):
        call_id = self.bench.talking(NUMBER)
        stopped = self.bench.driver.stop()
        self.assertNothingLeft(call_id, None)  # the driver let go; the registry stops on its own
        self.successResultOf(stopped)
