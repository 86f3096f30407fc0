"""The gateway's configuration: TOML in, one frozen :class:`Config` out.

``load(None)`` reads the embedded defaults, which are the packaged copy of
``etc/gateway.toml``; ``load(path)`` reads an operator's file. A file is the
whole configuration (it is not merged over the defaults): a key it leaves out
takes the default written in the section class, and a section it leaves out is
off. ``tests/test_config.py`` keeps the classes' defaults and the values in
``etc/gateway.toml`` identical.

The core sections (``gateway``, ``admin``, ``store``, ``pbx``, ``media``,
``extensions``, ``routes``) are classes of this module. Every other top-level
table belongs to an adapter plugin (:class:`gateway.adapters.IAdapter`), which
declares its name and section class; a table no plugin declares is an unknown
key. So loading takes two steps: ``[gateway]`` first, whose ``plugin_dirs``
are added to the plugin path (an operator's adapter there brings its own
section), then the rest. The bundled adapters' sections (``optimaccs``,
``patriot``, ``cti``, ``chat``; their classes live beside their code,
``gateway/<room>/config.py``) stay typed attributes of :class:`Config`, so
code reads ``config.patriot``; an operator's adapter's section is in
``config.adapter_sections``, and :meth:`Config.adapter_section` finds either.
"""

from __future__ import annotations

import importlib.resources
import re
import tomllib
import typing

import attrs

from gateway.chat.config import ChatConfig
from gateway.cluster.config import ClusterConfig
from gateway.confschema import (
    ConfigError,
    Secret,
    ServerEndpoint,
    check,
    mask_url_password,
    section,
    structure,
)
from gateway.cti.config import CtiConfig
from gateway.drivers.config import OptimaccsConfig, PbxConfig
from gateway.patriot.config import PatriotConfig
from gateway.sip.config import SipConfig
from gateway.tlspolicy import MINIMUMS

TLS_MINIMUM_PROBLEM = 'expected "1.2" or "1.3" (TLS 1.0 and 1.1 are never allowed), got {value!r}'

__all__ = ["BUNDLED_SECTIONS", "Config", "ConfigError", "DEFAULTS_NAME", "load", "loads"]

#: the sections of the bundled adapters (plugins/adapters.py), kept as typed attributes of Config
BUNDLED_SECTIONS = ("optimaccs", "patriot", "cti", "chat")

#: how the embedded defaults are named in messages
DEFAULTS_NAME = "gateway/etc/gateway.toml (embedded defaults)"

@section
class GatewaySection:
    node: str = attrs.field(default="gateway", validator=check(bool, "must not be empty"))
    state_dir: str = attrs.field(default="var", validator=check(bool, "must not be empty"))
    plugin_dirs: list[str] = attrs.Factory(list)
    shutdown_grace: float = attrs.field(
        default=5.0, validator=check(lambda v: 0 <= v <= 3600, "must be between 0 and 3600 seconds, got {value!r}")
    )
    #: the oldest TLS version of every ssl: listener and TLS link: "1.2" or "1.3" (gateway.tlspolicy)
    tls_minimum: str = attrs.field(default="1.2", validator=check(lambda v: v in MINIMUMS, TLS_MINIMUM_PROBLEM))
    #: worker processes under one parent (gateway.workers): 1 is the plain daemon, 0 one per core
    workers: int = attrs.field(
        default=1, validator=check(lambda v: 0 <= v <= 64, "must be between 0 (one per core) and 64, got {value!r}")
    )


@section
class AdminSection:
    listen: ServerEndpoint = ServerEndpoint("tcp:8080:interface=127.0.0.1")
    token: Secret = Secret("")
    #: the largest request body taken, in bytes: past it a 413, before the body is read
    max_body_size: int = attrs.field(
        default=1048576,
        validator=check(lambda v: 1024 <= v <= 67108864, "must be between 1024 and 67108864 bytes, got {value!r}"),
    )
    #: seconds in which a request's line, headers and body must all arrive: past it a 408 and the connection closed
    request_timeout: float = attrs.field(
        default=30.0, validator=check(lambda v: 1 <= v <= 3600, "must be between 1 and 3600 seconds, got {value!r}")
    )
    #: connections open at once: one more is answered 503 and closed
    max_connections: int = attrs.field(
        default=256, validator=check(lambda v: 1 <= v <= 100000, "must be between 1 and 100000, got {value!r}")
    )


@section
class StoreSection:
    #: may hold a password: every error, log line and repr shows it masked (mask_url_password)
    url: str = attrs.field(
        default="sqlite:var/gateway.sqlite",
        repr=mask_url_password,
        validator=check(
            lambda v: (v.startswith("sqlite:") and len(v) > 7) or re.fullmatch(r"postgres(ql)?://\S+", v) is not None,
            "expected sqlite:PATH or postgresql://user@host:port/dbname, got {value!r}",
            shown=mask_url_password,
        ),
    )
    #: records of each kind (CDR, provider CDR, SMS, conversation) kept waiting while the store cannot be written
    pending_max: int = attrs.field(
        default=10000,
        validator=check(lambda v: 1 <= v <= 1_000_000, "must be between 1 and 1000000 records, got {value!r}"),
    )


@section
class MediaSection:
    #: each direction of a call leg's audio buffers at most this much; when full, the oldest is dropped
    queue_ms: int = attrs.field(
        default=1000, validator=check(lambda v: 100 <= v <= 10000, "must be between 100 and 10000 ms, got {value!r}")
    )
    #: the playout's jitter target: a live source is pre-buffered to this much, and a standing backlog above it
    #: is trimmed (silence first); 0 turns the jitter buffer off (see gateway.media.playout)
    jitter_ms: int = attrs.field(default=20)

    @jitter_ms.validator
    def _check_jitter_ms(self, attribute, value):
        if not 0 <= value <= 500 or value >= self.queue_ms:
            raise ConfigError(attribute.name, f"must be between 0 and 500 ms and below queue_ms, got {value!r}")


_EXT_ID = re.compile(r"[A-Za-z0-9_.+-]{1,64}\Z")  # \Z, not $ (which also matches before a final newline)


@section
class Extension:
    """A desktop user's device; Patriot operators and CTI agents are bound to one."""

    id: str = attrs.field(validator=check(_EXT_ID.match, "expected 1-64 letters, digits or _.+-, got {value!r}"))
    name: str = ""
    #: how the user's phone is reached: "sim" (a simulated phone), "sim:answer=2.5",
    #: "sim:manual" (rings until answered through the API), "optimaccs:+6281...",
    #: "sip:<trunk>:<number>" (through a [[sip.trunks]] entry)
    device: str = attrs.field(default="sim", validator=check(lambda v: bool(v.partition(":")[0]), "must name a driver"))


_ROUTE_TO = re.compile(r"(extension:[A-Za-z0-9_.+-]{1,64}|app:[a-z][a-z0-9_-]*(:.*)?)\Z")


@section
class Route:
    """An inbound DID (an exact number or ``*``) and where its calls go."""

    did: str = attrs.field(validator=check(bool, "must not be empty"))
    to: str = attrs.field(
        validator=check(_ROUTE_TO.match, "expected extension:<id> or app:<name>[:<arg>], got {value!r}")
    )


@section
class Config:
    gateway: GatewaySection = attrs.Factory(GatewaySection)
    admin: AdminSection = attrs.Factory(AdminSection)
    store: StoreSection = attrs.Factory(StoreSection)
    pbx: PbxConfig = attrs.Factory(PbxConfig)
    media: MediaSection = attrs.Factory(MediaSection)
    extensions: list[Extension] = attrs.Factory(list)
    routes: list[Route] = attrs.Factory(list)
    #: absent: one process, no Redis (the default); see docs/cluster.md
    cluster: ClusterConfig | None = None
    #: absent: no SIP socket; present: the sip driver runs (docs/sip.md)
    sip: SipConfig | None = None
    optimaccs: OptimaccsConfig | None = None
    patriot: PatriotConfig | None = None
    cti: CtiConfig | None = None
    chat: ChatConfig | None = None
    #: section name -> the validated section of each other adapter plugin (an operator's) the file has
    adapter_sections: dict[str, typing.Any] = attrs.Factory(dict)

    def __attrs_post_init__(self):
        seen = set()
        for i, ext in enumerate(self.extensions):
            if ext.id in seen:
                raise ConfigError(f"extensions[{i}].id", f"duplicate extension id {ext.id!r}")
            seen.add(ext.id)
        for i, route in enumerate(self.routes):
            kind, _, target = route.to.partition(":")
            if kind == "extension" and target not in seen:
                raise ConfigError(f"routes[{i}].to", f"no extension with id {target!r}")
        self._check_sip()
        for path, ext_id in self.extension_references():
            if ext_id not in seen:
                raise ConfigError(path, f"no extension with id {ext_id!r}")

    def _check_sip(self) -> None:
        """``sip:`` devices name a configured trunk; ``[pbx] driver = "sip"`` needs a trunk."""
        for i, ext in enumerate(self.extensions):
            driver, _, address = ext.device.partition(":")
            if driver != "sip":
                continue
            if self.sip is None:
                raise ConfigError(f"extensions[{i}].device", "a sip: device needs the [sip] section")
            problem = self.sip.check_device(address)
            if problem is not None:
                raise ConfigError(f"extensions[{i}].device", problem)
        if self.pbx.driver == "sip" and (self.sip is None or not self.sip.trunks):
            raise ConfigError("pbx.driver", '"sip" needs the [sip] section with at least one [[sip.trunks]]')

    def extension(self, ext_id: str) -> Extension | None:
        return next((e for e in self.extensions if e.id == ext_id), None)

    def adapter_section(self, name: str) -> typing.Any:
        """The validated ``[name]`` section of an adapter, bundled or not; None when the file has none."""
        if name in BUNDLED_SECTIONS:
            return getattr(self, name)
        return self.adapter_sections.get(name)

    def extension_references(self):
        """(key path, extension id) for every adapter setting that names an extension."""
        for name in (*BUNDLED_SECTIONS, *self.adapter_sections):
            sub = self.adapter_section(name)
            refs = getattr(sub, "extension_references", None)
            if refs is not None:
                for path, ext_id in refs():
                    yield f"{name}.{path}", ext_id


def loads(text: str, source: str) -> Config:
    """Parse and validate TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"invalid TOML: {e}", source) from None
    try:
        return _structure(data)
    except ConfigError as e:
        raise e.with_source(source) from None


def _structure(data: dict) -> Config:
    """Validate parsed TOML in two steps: ``[gateway]`` for its ``plugin_dirs`` (an adapter plugin
    there declares a section of its own), then the core sections, then each adapter's section by
    its plugin's class."""
    from gateway.adapters import CORE_SECTIONS, adapter_plugins
    from gateway.pluginload import extend_plugin_path

    extend_plugin_path(structure(GatewaySection, data.get("gateway", {}), "gateway").plugin_dirs)
    declared = {adapter.section: adapter for adapter in adapter_plugins()}
    known = sorted({*CORE_SECTIONS, *declared})
    for key in data:
        if key not in known:
            raise ConfigError(key, f"unknown key (known keys here: {', '.join(known)})")
    core = structure(Config, {key: data[key] for key in CORE_SECTIONS if key in data})
    bundled, others = {}, {}
    for name, adapter in declared.items():
        if name in data:
            (bundled if name in BUNDLED_SECTIONS else others)[name] = structure(adapter.config_class, data[name], name)
    try:
        return attrs.evolve(core, adapter_sections=others, **bundled)  # the cross-checks run again, on everything
    except (ValueError, TypeError) as e:
        raise ConfigError("(top level)", str(e)) from None


def load(path: str | None = None) -> Config:
    """Load ``path``, or the embedded defaults when ``path`` is None."""
    if path is None:
        text = importlib.resources.files("gateway.etc").joinpath("gateway.toml").read_text("utf-8")
        return loads(text, DEFAULTS_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read the file: {e.strerror}", path) from None
    except UnicodeDecodeError:
        raise ConfigError("", "the file is not UTF-8 text", path) from None
    return loads(text, path)
