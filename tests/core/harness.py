"""A call registry on the real ``sim`` driver and the real media apps, driven by a task.Clock."""

from __future__ import annotations

from twisted.internet import defer, task

from gateway.config import Extension, Route
from gateway.core import events as ev
from gateway.core.mediactl import MediaController
from gateway.core.registry import Registry
from gateway.core.routing import Router
from gateway.drivers.config import NumberRule, SimNetworkConfig
from gateway.drivers.sim import SimNetwork, run_clock
from gateway.media import IMediaApp
from gateway.pluginload import plugins

#: the rules every harness network has: numbers that are busy, fail, never answer, answer late
RULES = [
    NumberRule(match="555000[0-9]", outcome="busy", after=1.0),
    NumberRule(match="555999[0-9]", outcome="failed", after=0.5),
    NumberRule(match="555888[0-9]", outcome="no-answer", after=10.0),
    NumberRule(match="5557.*", outcome="answer", after=5.0),
]

EXTENSIONS = [
    Extension(id="1001", name="Alice", device="sim"),
    Extension(id="1002", name="Bob", device="sim:answer=2"),
    Extension(id="1003", name="Carol", device="sim:manual"),
    Extension(id="1004", name="Dave", device="nowhere:x"),
]

ROUTES = [
    Route(did="100", to="extension:1001"),
    Route(did="103", to="extension:1003"),
    Route(did="200", to="app:echo"),
    Route(did="*", to="extension:1002"),
]


def media_apps() -> dict:
    return {app.name: app for app in plugins(IMediaApp)}


class Harness:
    """Everything a registry test needs; ``events`` records every event in order."""

    def __init__(self, *, audio: str = "silence", routes=ROUTES, cdr_sink=None, retention: float = 60.0,
                 apps: dict | None = None, **sim_options) -> None:
        """``apps``: media apps (name -> IMediaApp) beside the bundled ones."""
        self.clock = task.Clock()
        options = dict(phone_answer_delay=1.0, ring_time=2.0, no_answer_timeout=30.0, rules=RULES)
        self.config = SimNetworkConfig(audio=audio, **{**options, **sim_options})
        self.network = SimNetwork(self.clock, self.config)
        self.cdrs: list[dict] = []
        self.provider_cdrs: list[tuple] = []
        self.commands: list[tuple[str, str]] = []
        self.media = MediaController(self.clock, {**media_apps(), **(apps or {})})
        self.registry = Registry(
            self.clock,
            {"sim": self.network},
            extensions=EXTENSIONS,
            router=Router(routes, self.media.app_names),
            media=self.media,
            pbx_driver="sim",
            node="test-node",
            cdr_sink=cdr_sink or self._store_cdr,
            provider_cdr_sink=self._store_provider_cdr,
            retention=retention,
            on_command=lambda name, result: self.commands.append((name, result)),
        )
        # the wiring step of gateway.callservice: the network and the media delivering to the registry
        self.network.wire(self.registry)
        self.media.wire(self.registry)
        self.events: list[ev.CallEvent] = []
        self.registry.subscribe(lambda event, call: self.events.append(event))

    def _store_cdr(self, cdr: dict):
        self.cdrs.append(cdr)
        return defer.succeed(None)

    def _store_provider_cdr(self, call_id, source, data):
        self.provider_cdrs.append((call_id, source, data))
        return defer.succeed(None)

    def advance(self, seconds: float) -> None:
        run_clock(self.clock, seconds)

    def types(self, call_id: str | None = None) -> list[str]:
        return [e.type for e in self.events if call_id is None or e.call_id == call_id]

    def of(self, cls, call_id: str | None = None) -> list:
        return [e for e in self.events if isinstance(e, cls) and (call_id is None or e.call_id == call_id)]

    def state(self, call_id: str) -> str:
        return self.registry.call(call_id).state

    def talking_call(self, extension: str = "1001", number: str = "5551234", tones=(500, 700)) -> str:
        """A click-to-dial call that is TALKING, the phone and the party sending ``tones``."""
        d = self.registry.originate(extension, number)
        call_id = d.result.call_id
        self.advance(3.0 if extension == "1001" else 4.0)
        assert self.state(call_id) == "TALKING", self.state(call_id)
        self.network.party(extension).play_tone(tones[0])
        self.network.party(number).play_tone(tones[1])
        return call_id

    def listen(self, seconds: float = 0.6, *parties) -> None:
        """Forget what ``parties`` (default: all live) heard, then let ``seconds`` of audio flow."""
        for party in parties or self.network.parties():
            party.forget_heard()
        self.advance(seconds)
