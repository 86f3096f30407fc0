"""Log observers for the daemon: JSON lines or plain text, secrets redacted.

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
"""

from __future__ import annotations

import datetime
import json
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

__all__ = ["REDACTED", "event_as_json", "json_lines", "redact", "redacting", "text"]

#: what a secret is shown as
REDACTED = "***"

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
    """One event as one line of JSON (no newline). Call it on a redacted event."""
    level = event.get("log_level")
    record = {
        "time": _time(event),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
        **_fields(event),
    }
    failure = _failure(event)
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    try:
        return json.dumps(record, default=safe_repr, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps({key: _jsonable(value) for key, value in record.items()}, default=safe_repr)


def json_lines(out_file=None) -> ILogObserver:
    """An observer writing one JSON object per event to ``out_file`` (default: stdout)."""
    out = sys.stdout if out_file is None else out_file
    return redacting(FileLogObserver(out, lambda event: event_as_json(event) + "\n"))


def text(out_file=None) -> ILogObserver:
    """An observer writing Twisted's classic text lines to ``out_file`` (default: stdout)."""
    out = sys.stdout if out_file is None else out_file
    return redacting(FileLogObserver(out, formatEventAsClassicLogText))
