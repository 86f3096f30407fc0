"""Log observers for the daemon: JSON lines or plain text, secrets redacted, peers' text bounded and escaped.

Both are factories ``twistd`` can call with no arguments::

    twistd --nodaemon --pidfile= --logger gateway.logs.json_lines gateway ...
    twistd --nodaemon --pidfile= --logger gateway.logs.text gateway ...

They capture ``sys.stdout`` when called, before ``twistd`` redirects it into
the log, so under systemd every event is one line in the journal.

A JSON line is one object::

    {"time": "2024-05-01T12:00:00.123456Z", "level": "info",
     "namespace": "gateway.patriot", "message": "<the formatted text>",
     ...the event's named fields..., "traceback": "<when a failure is logged>"}

Named fields that JSON cannot hold are written as their ``repr``; Twisted's
own ``log_*`` keys are left out. A field whose name clashes with one of the
keys above is written with a trailing underscore (``message_``).

Every event goes through :func:`redact` first: a
:class:`~gateway.confschema.Secret` value, at the top level or inside a dict,
list or tuple, becomes ``"***"`` before it is formatted, so neither the
message nor the fields can show it (not even a format string like
``{token.reveal()}``).

Then, before the message is formatted, every string in a named field (at the
top level or inside a dict, list or tuple; dict keys too) is :func:`bounded`:
at most :data:`MAX_FIELD` characters, the rest cut off with a visible marker
(``…(+59623 chars)``), and every control character (C0 including ``\n``,
``\r``, ``\t`` and NUL; DEL; C1; U+2028/U+2029) and lone surrogate written as a
visible escape (``\n``, ``\x00``, ``\x85``, ``\u2028``, ``\udc80``). A bytes field
is cut likewise. The formatted message itself is escaped the same way (the
format or an object's ``str`` may hold a newline too) and cut at
:data:`MAX_MESSAGE`, so a peer's text can neither fill the log nor forge a line:
each event is one line in both formats. Only the traceback of a failure keeps
its newlines (the text format indents its lines with a tab, as Twisted does).
"""

from __future__ import annotations

import datetime
import json
import re
import sys

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python.reflect import safe_repr
from zope.interface import provider

from gateway.confschema import Secret

__all__ = ["MAX_FIELD", "MAX_MESSAGE", "REDACTED", "bounded", "escape", "event_as_json", "event_as_text",
           "json_lines", "redact", "redacting", "text"]

#: what a secret is shown as
REDACTED = "***"

#: the most characters of one string field written (the rest is cut off, with a marker saying how many)
MAX_FIELD = 500
#: the most characters of a formatted message written
MAX_MESSAGE = 4000

#: what is written as an escape: C0 controls, DEL, C1 controls, the Unicode line and paragraph
#: separators, and lone surrogates (which no UTF-8 log can hold)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: the keys every JSON line has (or, for traceback, may have)
_RESERVED = frozenset({"time", "level", "namespace", "message", "traceback"})

#: what twisted.python.log.msg/err put in an event beside its log_* keys;
#: the message, time and traceback already carry them
_LEGACY_KEYS = frozenset({"message", "time", "isError", "format", "failure", "why"})


def _redacted(value, inside=frozenset()):
    """``value`` with secrets replaced, searching plain dicts, lists and tuples.

    Other containers' reprs already hide a Secret; ``inside`` holds the ids of
    the containers being searched, so a container holding itself is left as is.
    """
    if isinstance(value, Secret):
        return REDACTED
    kind = type(value)
    if kind not in (dict, list, tuple) or id(value) in inside:
        return value
    inside = inside | {id(value)}
    if kind is dict:
        return {k: _redacted(v, inside) for k, v in value.items()}
    return kind(_redacted(v, inside) for v in value)


def _escaped_char(match) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str) -> str:
    """``text`` with every control character and lone surrogate written as a visible escape."""
    return _CONTROL.sub(_escaped_char, text)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return escape(text)
    return f"{escape(text[:limit])}…(+{len(text) - limit} chars)"


def _bounded(value, inside=frozenset()):
    """``value`` with each string bounded and escaped, searching plain dicts, lists and tuples (as
    :func:`_redacted` does)."""
    kind = type(value)
    if isinstance(value, str):
        return _cut(value, MAX_FIELD)
    if isinstance(value, (bytes, bytearray)):
        if len(value) <= MAX_FIELD:
            return value
        return f"{bytes(value[:MAX_FIELD])!r}…(+{len(value) - MAX_FIELD} bytes)"
    if kind not in (dict, list, tuple) or id(value) in inside:
        return value
    inside = inside | {id(value)}
    if kind is dict:
        items = [(_bounded(k, inside), _bounded(v, inside)) for k, v in value.items()]
        if all(k is old_k and v is old_v for (k, v), (old_k, old_v) in zip(items, value.items())):
            return value  # nothing to change: the same object (a circular one keeps its repr)
        return dict(items)
    items = [_bounded(v, inside) for v in value]
    return value if all(new is old for new, old in zip(items, value)) else kind(items)


def bounded(event: dict) -> dict:
    """A copy of ``event`` whose named fields (not Twisted's ``log_*`` keys) hold no string longer than
    :data:`MAX_FIELD` characters and no control character: see the module docstring."""
    return {key: value if key.startswith("log_") else _bounded(value) for key, value in event.items()}


def redact(event: dict) -> dict:
    """A copy of ``event`` with every :class:`Secret` value replaced by ``"***"``."""
    return {key: _redacted(value) for key, value in event.items()}


def redacting(observer: ILogObserver) -> ILogObserver:
    """Wrap ``observer`` so that it only ever sees redacted events."""

    @provider(ILogObserver)
    def observe(event):
        observer(redact(event))

    return observe


def _time(event) -> str | None:
    when = event.get("log_time")
    if when is None:
        return None
    stamp = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    return stamp.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _failure(event):
    """The event's failure: ``log.failure`` puts it in ``log_failure``, ``log.err`` in ``failure``."""
    if "log_failure" in event:
        return event["log_failure"]
    if event.get("log_namespace") == "log_legacy" and event.get("isError"):
        return event.get("failure")
    return None


def _message(event) -> str:
    """The formatted message of a :func:`bounded` event, one line: escaped, at most :data:`MAX_MESSAGE`
    characters. A legacy error's traceback, which Twisted writes into its text, is left out (the
    traceback is written as the traceback)."""
    message = formatEvent(event)
    failure = _failure(event)
    if failure is not None and event.get("log_namespace") == "log_legacy":
        traceback = failure.getTraceback()
        if traceback and message.endswith(traceback):  # twisted.python.log: why + "\n" + the traceback
            message = message[: -len(traceback)].rstrip("\n")
    return _cut(message, MAX_MESSAGE)


def _fields(event) -> dict:
    """The event's named fields, renamed where they clash with a reserved key."""
    legacy = event.get("log_namespace") == "log_legacy"
    return {
        key + "_" if key in _RESERVED else key: value
        for key, value in event.items()
        if not key.startswith("log_") and not (legacy and key in _LEGACY_KEYS)
    }


def _jsonable(value):
    """``value`` if JSON can hold it (anything inside may become a repr), else its repr."""
    try:
        json.dumps(value, default=safe_repr, allow_nan=False)
    except (TypeError, ValueError):
        return safe_repr(value)
    return value


def event_as_json(event: dict) -> str:
    """One event as one line of JSON (no newline), its fields bounded. Call it on a redacted event."""
    event = bounded(event)
    level = event.get("log_level")
    record = {
        "time": _time(event),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace"),
        "message": _message(event),
        **_fields(event),
    }
    failure = _failure(event)
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    try:
        return json.dumps(record, default=safe_repr, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps({key: _jsonable(value) for key, value in record.items()}, default=safe_repr)


def event_as_text(event: dict) -> str | None:
    """One event as Twisted's classic text line (with its newline), its fields bounded and its message
    one line; a failure's traceback follows on lines indented with a tab. Call it on a redacted event."""
    event = bounded(event)
    shown = {key: value for key, value in event.items() if key != "log_failure"}
    shown.update(log_format="{log_gateway_message}", log_gateway_message=_message(event))
    failure = _failure(event)
    if failure is not None:
        shown["log_failure"] = failure
    return formatEventAsClassicLogText(shown)


def json_lines(out_file=None) -> ILogObserver:
    """An observer writing one JSON object per event to ``out_file`` (default: stdout)."""
    out = sys.stdout if out_file is None else out_file
    return redacting(FileLogObserver(out, lambda event: event_as_json(event) + "\n"))


def text(out_file=None) -> ILogObserver:
    """An observer writing Twisted's classic text lines to ``out_file`` (default: stdout)."""
    out = sys.stdout if out_file is None else out_file
    return redacting(FileLogObserver(out, event_as_text))
