"""The machinery that turns parsed TOML into frozen, validated attrs objects.

A configuration section is an ``attrs`` class whose field annotations say what
each key holds::

    @section
    class BridgeConfig:
        listen: ServerEndpoint = ServerEndpoint("tcp:8765:interface=127.0.0.1")
        users: list[BridgeUser] = attrs.Factory(list)
        password: Secret | None = None

:func:`structure` walks such a class: unknown keys are errors (a typo must never
silently drop a setting), every value is checked against its annotation, and
every error names the key path (``patriot.bridge.users[0].extension``) so that
:class:`ConfigError` reads as one line an operator can act on.

Supported annotations: ``str``, ``int``, ``float`` (an integer is accepted),
``bool``, :class:`Secret`, :class:`ServerEndpoint`, :class:`ClientEndpoint`,
``list[T]``, ``dict[str, T]``, ``typing.Literal[...]`` of strings, ``T | None``
(``None`` is the absent value: TOML has no null) and nested section classes.
Validators on fields (``attrs.field(validator=...)``) raising ``ValueError``
or ``TypeError`` are reported the same way.
"""

from __future__ import annotations

import re
import types
import typing

import attrs

__all__ = [
    "ClientEndpoint",
    "ConfigError",
    "Secret",
    "ServerEndpoint",
    "check",
    "section",
    "structure",
]


class ConfigError(Exception):
    """A configuration problem, rendered as ``SOURCE: KEY.PATH: problem``."""

    def __init__(self, path: str, problem: str, source: str | None = None):
        super().__init__(path, problem, source)
        self.path = path
        self.problem = problem
        self.source = source

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.path, self.problem, source)

    def __str__(self) -> str:
        parts = [p for p in (self.source, self.path) if p]
        return ": ".join(parts + [self.problem])


def section(cls):
    """Declare a configuration section: a frozen, keyword-only attrs class."""
    return attrs.frozen(kw_only=True)(cls)


_QUERY_PASSWORD = re.compile(r"(?i)\b(password|passwd|pwd)=[^&\s]*")


def mask_url_password(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it, and any
    ``password=`` query value, replaced by ``***``: for every error and log line that repeats a
    URL as written (``postgresql://gw:s3cret@db/gw`` -> ``postgresql://gw:***@db/gw``). The
    userinfo runs to the last ``@`` of the URL, so a password holding ``@``, ``/`` or ``:`` is
    masked whole."""
    if not isinstance(text, str):
        return text
    out, position = [], 0
    for match in re.finditer(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        if match.start() < position:
            continue
        start = match.end()
        end = start
        while end < len(text) and not text[end].isspace() and text[end] not in "'\"":
            end += 1
        at = text.rfind("@", start, end)
        if at == -1:  # a password holding a space: the URL runs to its closing quote
            limits = [i for i in (text.find("'", start), text.find('"', start)) if i != -1]
            following = re.compile(r"\s\S*://").search(text, start)
            if following is not None:
                limits.append(following.start())
            at = text.rfind("@", start, min(limits) if limits else len(text))
        colon = text.find(":", start, at) if at != -1 else -1
        if colon != -1:
            out.append(text[position:colon + 1] + "***")
            position = at
    out.append(text[position:])
    return _QUERY_PASSWORD.sub(lambda m: f"{m.group(1)}=***", "".join(out))


@attrs.frozen(repr=False)
class Secret:
    """A password, API key or token: never shown by ``repr``/``str``/logs.

    Call :meth:`reveal` at the single place the value is really needed.
    """

    _value: str

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class _EndpointString(str):
    """An endpoint description, checked by Twisted's own parser when configured.

    The subclasses are annotations only: their values are plain ``str``,
    because Twisted's endpoint parsers do not accept ``str`` subclasses.
    """

    kind = "endpoint"

    def __new__(cls, text):
        return str(text)

    @classmethod
    def check(cls, text: str) -> "_EndpointString":
        from twisted.internet.testing import MemoryReactor

        try:
            cls._parse(MemoryReactor(), text)
            _check_address(cls.kind, text)
        except Exception as e:  # Twisted's parsers raise a zoo of types
            detail = str(e) or type(e).__name__
            raise ValueError(f"bad {cls.kind} endpoint {text!r}: {detail}") from None
        return cls(text)


#: the endpoint types whose port, interface and host :func:`_check_address` checks
_INET_TYPES = ("tcp", "tcp6", "ssl", "tls")


def _check_address(kind: str, text: str) -> None:
    """Refuse a port out of range, an interface that is not an IP address, a missing host.

    Twisted's parsers take these as they are (``tcp:80800`` parses), and the
    mistake would only show when the daemon binds or connects.
    """
    import ipaddress

    from twisted.internet.endpoints import _parse

    args, kwargs = _parse(text)
    endpoint_type, args = str(args[0]).lower(), args[1:]
    if endpoint_type not in _INET_TYPES:
        return
    if kind == "listening":
        port, lowest = (args[0] if args else kwargs.get("port")), 0
        interface = kwargs.get("interface", "")
        if interface:
            try:
                address = ipaddress.ip_address(interface)
            except ValueError:
                raise ValueError(
                    f"interface {interface!r} is not an IP address (one of this machine's, e.g. 127.0.0.1,"
                    " or \\:\\:1 escaped for tcp6; left out: every interface)"
                ) from None
            if endpoint_type == "tcp6" and address.version != 6:
                raise ValueError(f"a tcp6 endpoint needs an IPv6 interface, got {interface!r} (use tcp:)")
    else:
        host = args[0] if args else kwargs.get("host")
        port, lowest = (args[1] if len(args) > 1 else kwargs.get("port")), 1
        if not host:
            raise ValueError("no host to connect to")
    if port is not None and not lowest <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is out of range ({lowest}-65535)")


class ServerEndpoint(_EndpointString):
    """A listening endpoint string: ``tcp:4143``, ``ssl:...``, ``systemd:domain=INET:index=0``.

    ``ssl:`` is read as :mod:`gateway.tlspolicy` reads it (its files too), so a key it refuses
    (``sslmethod``) or a ``tls:`` listener is reported at load.
    """

    kind = "listening"

    @staticmethod
    def _parse(reactor, text):
        from gateway.tlspolicy import DEFAULT

        if text.startswith("systemd:"):
            # The inherited descriptors exist only under systemd; check the
            # syntax now and let the real listen report a missing socket.
            args = dict(p.partition("=")[::2] for p in text.split(":")[1:])
            if args.get("domain") not in ("INET", "INET6", "UNIX") or not (
                args.get("index", "").isdigit() or args.get("name")
            ):
                raise ValueError("systemd endpoints need domain=INET|INET6|UNIX and index=N or name=NAME")
            return None
        return DEFAULT.server_endpoint(reactor, text)


class ClientEndpoint(_EndpointString):
    """A connecting endpoint string: ``tcp:host=10.0.0.5:port=9000``, ``tls:host:port``."""

    kind = "connecting"

    @staticmethod
    def _parse(reactor, text):
        from gateway.tlspolicy import DEFAULT

        return DEFAULT.client_endpoint(reactor, text)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported annotation {tp!r} at {path}")
        return _convert(inner[0], value, path)
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(path, f"expected one of {choices}, got {_describe(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(path, f"expected an array, got {_describe(value)}")
        return [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a table, got {_describe(value)}")
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is Secret:
        return Secret(_convert(str, value, path))
    if attrs.has(tp):
        return structure(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, _EndpointString):
        text = _convert(str, value, path)
        try:
            return tp.check(text)
        except ValueError as e:
            raise ConfigError(path, str(e)) from None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    raise ConfigError(path, f"expected {_TYPE_NAMES[tp]}, got {_describe(value)}")


def structure(cls, data, path: str = ""):
    """Build a section object of type ``cls`` from a parsed TOML table."""
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a table, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise ConfigError(_join(path, key), f"unknown key (known keys here: {known})")
    kwargs = {}
    for name, field in fields.items():
        sub = _join(path, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub)
        elif field.default is attrs.NOTHING:
            raise ConfigError(sub, "missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(_join(path, e.path), e.problem) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(path or "(top level)", str(e)) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else (path or key)


def check(predicate, problem: str, *, shown=None):
    """An attrs validator reporting ``problem`` (``{value!r}`` is filled in) at the field's key.

    ``shown``: applied to the message before it is raised (e.g. :func:`mask_url_password`, for a
    URL that may hold a password)."""

    def validator(instance, attribute, value):
        if not predicate(value):
            text = problem.format(value=value)
            raise ConfigError(attribute.name, shown(text) if shown is not None else text)

    return validator
