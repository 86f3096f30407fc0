"""The HIS message envelope as validated value objects, with builders for each message type.

Every message on the link is ``{"header": {...}, "body": {...}}``. The header always has ``type``
(``cti.query``, ``cti.request``, ``cti.response`` or ``cti.event``), ``name`` and ``target``;
queries, requests and responses carry a GUID ``requestId``; a response repeats the original
``name``, ``target`` and ``requestId`` and adds ``result`` (``SUCCESS``/``FAILURE``) and, on
failure, a human-readable ``errorMessage`` that may be shown to the agent.

:meth:`Envelope.from_json` turns a decoded JSON object into an :class:`Envelope` or raises
:class:`EnvelopeError` with a readable message. A missing ``body`` is read as ``{}`` (events
without properties); a ``body`` that is present must be an object. Unknown header keys are ignored.

:func:`echo_failure` answers what :meth:`Envelope.from_json` cannot read but which still carries a
``requestId`` (004: the client always responds): a FAILURE response echoing every header field that
is usable text, with lone surrogates visibly escaped (:func:`gateway.boundary.sanitise`).
"""

import enum
import reprlib
import uuid

import attrs

from gateway.boundary import sanitise


class MessageType(enum.StrEnum):
    """The four ``header.type`` values."""

    QUERY = "cti.query"
    REQUEST = "cti.request"
    RESPONSE = "cti.response"
    EVENT = "cti.event"


class Result(enum.StrEnum):
    """The ``header.result`` of a response."""

    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


#: Message types that expect a response, and so must carry a ``requestId``.
ANSWERABLE = frozenset({MessageType.QUERY, MessageType.REQUEST})


class EnvelopeError(ValueError):
    """A message does not have the shape of a HIS envelope; ``str()`` says why."""


def new_request_id():
    """A fresh GUID for ``header.requestId``."""
    return str(uuid.uuid4())


def _one_of(enum_type, value, what):
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise EnvelopeError(f"{what} {value!r} is not one of {allowed}") from None


def _optional_text(header, key):
    value = header.get(key)
    if value is not None and not isinstance(value, str):
        raise EnvelopeError(f"header.{key} is a {type(value).__name__}, not a string")
    return value


@attrs.frozen
class Header:
    """The validated ``header`` of a message."""

    type: MessageType = attrs.field(converter=MessageType)
    name: str
    target: str
    request_id: str | None = None
    result: Result | None = attrs.field(default=None, converter=attrs.converters.optional(Result))
    error_message: str | None = None

    def __attrs_post_init__(self):
        # A response may lack them: it echoes a message that had none (see echo_failure); a response
        # read from the wire is checked in from_json.
        for key in ("name", "target"):
            if not getattr(self, key) and self.type is not MessageType.RESPONSE:
                raise EnvelopeError(f"header.{key} is missing")
        if self.request_id is None and (self.type in ANSWERABLE or self.type is MessageType.RESPONSE):
            raise EnvelopeError(f"{self.type} {self.name!r} on {self.target!r} has no requestId")
        if self.type is MessageType.RESPONSE and self.result is None:
            raise EnvelopeError(f"response {self.name!r} on {self.target!r} has no result")

    @classmethod
    def from_json(cls, header):
        if not isinstance(header, dict):
            raise EnvelopeError(f"header is a {type(header).__name__}, not an object")
        message_type = _one_of(MessageType, header.get("type"), "header.type")
        result = header.get("result")
        name, target = _optional_text(header, "name"), _optional_text(header, "target")
        for key, value in (("name", name), ("target", target)):
            if not value:
                raise EnvelopeError(f"header.{key} is missing")
        return cls(
            type=message_type,
            name=name,
            target=target,
            request_id=_optional_text(header, "requestId"),
            result=None if result is None else _one_of(Result, result, "header.result"),
            error_message=_optional_text(header, "errorMessage"),
        )

    def to_json(self):
        fields = {
            "type": self.type.value,
            "name": self.name,
            "target": self.target,
            "requestId": self.request_id,
            "result": None if self.result is None else self.result.value,
            "errorMessage": self.error_message,
        }
        return {key: value for key, value in fields.items() if value is not None}


@attrs.frozen
class Envelope:
    """One message: a :class:`Header` and a ``body`` object."""

    header: Header
    body: dict = attrs.field(factory=dict, converter=dict)

    @classmethod
    def from_json(cls, obj):
        """Validate a decoded JSON message; raise :class:`EnvelopeError` if it is not an envelope."""
        if not isinstance(obj, dict):
            raise EnvelopeError(f"message is a {type(obj).__name__}, not an object")
        if "header" not in obj:
            raise EnvelopeError("message has no header")
        body = obj.get("body", {})
        if not isinstance(body, dict):
            raise EnvelopeError(f"body is a {type(body).__name__}, not an object")
        return cls(Header.from_json(obj["header"]), body)

    def to_json(self):
        return {"header": self.header.to_json(), "body": self.body}

    @property
    def type(self):
        return self.header.type

    @property
    def name(self):
        return self.header.name

    @property
    def target(self):
        return self.header.target

    @property
    def request_id(self):
        return self.header.request_id

    @property
    def ok(self):
        """True for a ``SUCCESS`` response."""
        return self.header.result is Result.SUCCESS

    def describe(self, limit: int | None = None):
        """One readable line: type, name, target, request id / result, body.

        With ``limit``, the line is at most ``limit`` characters, and a large body (a peer's message
        may be a megabyte) is never written out whole to build it.
        """
        header = self.header
        cut = (lambda text: text) if limit is None else (lambda text: text[:limit])
        parts = [header.type.value, cut(header.name or "(no name)"), "on", cut(header.target or "(no target)")]
        if header.request_id:
            parts.append(f"[{cut(header.request_id)}]")
        if header.result:
            parts.append(header.result.value)
        if header.error_message:
            parts.append(repr(cut(header.error_message)))
        if self.body:
            parts.append(repr(self.body) if limit is None else _SHORT_REPR.repr(self.body))
        line = " ".join(parts)
        return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


#: a bounded repr for a body in a short description: it stops early instead of walking the whole body
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist = 4, 10, 10
_SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = 80, 80, 40


def _message(message_type, name, target, body, request_id=None):
    return Envelope(Header(message_type, name, target, request_id=request_id), body or {})


def query(name, target, body=None, request_id=None):
    """A ``cti.query``; a new GUID is used unless ``request_id`` is given."""
    return _message(MessageType.QUERY, name, target, body, request_id or new_request_id())


def request(name, target, body=None, request_id=None):
    """A ``cti.request``; a new GUID is used unless ``request_id`` is given."""
    return _message(MessageType.REQUEST, name, target, body, request_id or new_request_id())


def event(name, target, body=None):
    """A ``cti.event`` (events carry no requestId)."""
    return _message(MessageType.EVENT, name, target, body)


def response(original, result=Result.SUCCESS, error_message=None, body=None):
    """The response to the query or request ``original``: same name, target and requestId."""
    if original.type not in ANSWERABLE:
        raise ValueError(f"cannot respond to a {original.type}")
    header = Header(
        MessageType.RESPONSE,
        original.name,
        original.target,
        request_id=original.request_id,
        result=result,
        error_message=error_message,
    )
    return Envelope(header, body or {})


def success(original, body=None):
    """A ``SUCCESS`` response to ``original`` carrying ``body``."""
    return response(original, Result.SUCCESS, body=body)


def failure(original, error_message):
    """A ``FAILURE`` response to ``original``; ``error_message`` may be shown to the agent."""
    return response(original, Result.FAILURE, error_message=error_message)


#: header types whose messages are never answered, even when they carry a requestId
_NEVER_ANSWERED = frozenset({MessageType.RESPONSE.value, MessageType.EVENT.value})


def _echoable(value):
    """``value`` as text fit for the wire (lone surrogates escaped), or ``""`` if it is not a string."""
    if not isinstance(value, str):
        return ""
    return sanitise(value)[0]


def echo_failure(obj, error_message):
    """The FAILURE response to ``obj``, a decoded message that is not a valid envelope; or None.

    It is answered when its header is an object with a string ``requestId`` and a ``type``
    that is not ``cti.response`` or ``cti.event`` (a query, a request, or a type missing or unknown):
    the response echoes the ``requestId``, and the ``name`` and ``target`` where they are strings, each
    with any lone surrogate written as its visible escape (``\\ud800``); a ``name`` or ``target`` the
    message lacks is sent as ``""``, since 004 makes both part of every response header.
    Without a usable ``requestId`` nothing can be answered: None.
    """
    header = obj.get("header") if isinstance(obj, dict) else None
    if not isinstance(header, dict):
        return None
    request_id = header.get("requestId")
    request_id = sanitise(request_id)[0] if isinstance(request_id, str) else None
    message_type = header.get("type")
    if request_id is None or (isinstance(message_type, str) and message_type in _NEVER_ANSWERED):
        return None
    echoed = Header(
        MessageType.RESPONSE,
        _echoable(header.get("name")),
        _echoable(header.get("target")),
        request_id=request_id,
        result=Result.FAILURE,
        error_message=sanitise(str(error_message))[0],
    )
    return Envelope(echoed)
