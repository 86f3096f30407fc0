"""The HIS message envelope as validated value objects, with builders for each message type.

Every message on the link is ``{"header": {...}, "body": {...}}``. The header always has ``type``
(``cti.query``, ``cti.request``, ``cti.response`` or ``cti.event``), ``name`` and ``target``;
queries, requests and responses carry a GUID ``requestId``; a response repeats the original
``name``, ``target`` and ``requestId`` and adds ``result`` (``SUCCESS``/``FAILURE``) and, on
failure, a human-readable ``errorMessage`` that may be shown to the agent.

:meth:`Envelope.from_json` turns a decoded JSON object into an :class:`Envelope` or raises
:class:`EnvelopeError` with a readable message. A missing ``body`` is read as ``{}`` (events
without properties); a ``body`` that is present must be an object. Unknown header keys are ignored.
"""

import enum
import uuid

import attrs


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
        for key in ("name", "target"):
            if not getattr(self, key):
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
        return cls(
            type=message_type,
            name=_optional_text(header, "name"),
            target=_optional_text(header, "target"),
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

    def describe(self):
        """One readable line: type, name, target, request id / result, body."""
        header = self.header
        parts = [header.type.value, header.name, "on", header.target]
        if header.request_id:
            parts.append(f"[{header.request_id}]")
        if header.result:
            parts.append(header.result.value)
        if header.error_message:
            parts.append(repr(header.error_message))
        if self.body:
            parts.append(repr(self.body))
        return " ".join(parts)


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
