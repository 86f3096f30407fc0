"""The boundary policy for data from peers: one place that decides what text and JSON may come in.

Every adapter (OptimaCCS, Patriot, HIS, Expertflow's Socket.IO link) and the
admin API decodes what a peer sends through this module, so that everything
that crosses into the core, a log line, JSON output or the store is valid
Unicode made of finite numbers. The policy:

- **Text is strict UTF-8.** Bytes that are not UTF-8 are refused, never
  replaced: a peer that sends them is broken or hostile, and guessing would
  change identifiers (a ``requestId``, a ``sessionId``) behind its back.
- **No lone surrogates.** JSON can spell a UTF-16 surrogate with a ``\\ud800``
  escape that no UTF-8 text can hold. Python keeps it in a ``str`` that later
  fails to encode, in a log, a JSON answer or the database, far away from the
  peer that sent it. A string holding one is *refused* at the boundary, naming
  the field, rather than repaired: a valid pair (an emoji) is one character and
  passes.
- **Finite numbers only.** ``NaN``, ``Infinity`` and ``-Infinity`` are not
  JSON (RFC 8259), and ``1e999`` overflows to infinity; both are refused at
  parse.
- **Bounded nesting.** A document nested deeper than :data:`MAX_DEPTH` is
  refused: deep nesting is never a real message, and it would otherwise end in
  ``RecursionError`` somewhere else.
- **Numbers from strings are parsed defensively** (:func:`parse_int`): ASCII
  digits only, bounded length, never an exception.

Each protocol turns :class:`PeerDataError` into its own clear error (a close
code, a FAILURE response, an init failure, a dropped packet, a 400): see
``docs/security.md``.

Records that still cannot be stored as they are (a store's refusal) go through
:func:`sanitise`, which keeps the original visibly escaped, so that no record
is lost because of its content.

:class:`IgnoredBudget` is the other half of the boundary: a per-connection
budget for the log lines about ignored or unknown messages, so that a peer
cannot turn a flood of junk into a flood of log lines. It is built on
:class:`RateLimitedLog`, the one rate limiter for recurring log lines (a link's
failed connection attempts use it too).

:class:`MessageRate` is the per-connection cap on how many messages a peer may
send: a token bucket an adapter asks before it handles each message, closing a
connection that goes past it (counted as ``rate_limited``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, LogLevel

__all__ = [
    "IGNORED_REASONS",
    "IgnoredBudget",
    "MAX_DEPTH",
    "MessageRate",
    "PeerDataError",
    "RateLimitedLog",
    "bad_text_field",
    "budget_factory",
    "check_text",
    "ignored_counter",
    "load_json",
    "parse_int",
    "sanitise",
]

#: the deepest nesting of arrays and objects a peer's JSON may have
MAX_DEPTH = 32
#: the most digits :func:`parse_int` reads (a cause code, a count, a port)
MAX_INT_DIGITS = 18

log = Logger()


class PeerDataError(ValueError):
    """What a peer sent is not data the gateway accepts.

    ``field`` is the dotted path of the offending field (``"payload.password"``,
    ``"items[2]"``), or ``None`` when the whole message is at fault; ``str()``
    is one sentence fit for a log line, a close reason or an error response.
    ``reason`` is the :data:`IGNORED_REASONS` value an adapter counts it as:
    ``"bad_text"`` for text that is not valid Unicode (bytes that are not UTF-8,
    a lone surrogate), ``"malformed"`` for everything else (not JSON, ``NaN``,
    an overflowing number, nesting too deep). ``in_key`` is true when the bad
    text is in an object's key (``field`` then names the object holding it, or
    the escaped key itself for a top-level one). Adapters classify by these
    attributes, never by the message text.
    """

    #: the decoded document when the only fault was a string's text (a lone surrogate) in the
    #: named ``field``, so that an adapter can still answer that message with its own error;
    #: ``None`` otherwise (and always for errors not raised by :func:`load_json`)
    document: Any = None

    def __init__(self, problem: str, field: str | None = None, *, reason: str = "malformed", in_key: bool = False):
        if reason not in ("bad_text", "malformed"):
            raise ValueError(f"a PeerDataError's reason is bad_text or malformed, not {reason!r}")
        self.problem = problem
        self.field = field
        self.reason = reason
        self.in_key = in_key
        super().__init__(f"field {field!r}: {problem}" if field else problem)


def _refuse_constant(name: str):
    raise PeerDataError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PeerDataError(f"number {text[:40]} is out of range")
    return value


_decoder = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def load_json(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """A peer's JSON document, checked against the boundary policy.

    :raises PeerDataError: for bytes that are not UTF-8, text that is not
        JSON, non-finite numbers, nesting deeper than ``max_depth``, or a
        string (key or value) holding a lone surrogate, which it names.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as error:
            raise PeerDataError(f"not UTF-8 text (bad byte at offset {error.start})", reason="bad_text") from None
    else:
        text = data
        if _has_surrogate(text):
            raise PeerDataError("text holds a lone UTF-16 surrogate", reason="bad_text")
    try:
        value = _decoder.decode(text)
    except PeerDataError:
        raise
    except RecursionError:
        raise PeerDataError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as error:  # JSONDecodeError, and int() past sys.get_int_max_str_digits()
        raise PeerDataError(f"not JSON ({error})") from None
    # Only a \u escape can make a surrogate in text that was UTF-8, and only a
    # document with more brackets than max_depth can be nested deeper: the
    # common message skips the walk.
    may_hold_surrogate = "\\u" in text or "\\U" in text
    may_be_deep = text.count("[") + text.count("{") > max_depth
    if may_hold_surrogate or may_be_deep:
        try:
            _walk(value, max_depth)
        except PeerDataError as error:
            if error.reason == "bad_text" and error.field is not None:
                _walk(value, max_depth, check_text=False)  # a deeper fault wins, without the document
                error.document = value
            raise
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(value: Any, max_depth: int, *, check_text: bool = True) -> None:
    """Refuse nesting deeper than ``max_depth`` and (``check_text``) strings with lone surrogates; iterative."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if check_text and _has_surrogate(item):
                raise PeerDataError("holds a lone UTF-16 surrogate", path or None, reason="bad_text")
        elif isinstance(item, dict):
            if depth >= max_depth:
                raise PeerDataError(f"JSON nested deeper than {max_depth} levels")
            for key, child in item.items():
                child_path = f"{path}.{key}" if path else key
                if check_text and _has_surrogate(key):
                    # named by the object holding it; a top-level key by itself, escaped, so that the
                    # document is kept and the adapter can still answer the message
                    raise PeerDataError("a key holds a lone UTF-16 surrogate", _escaped(path or key),
                                        reason="bad_text", in_key=True)
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, list):
            if depth >= max_depth:
                raise PeerDataError(f"JSON nested deeper than {max_depth} levels")
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def check_text(value: str, field: str) -> str:
    """``value`` itself if it is valid Unicode text; PeerDataError naming ``field`` otherwise."""
    if _has_surrogate(value):
        raise PeerDataError("holds a lone UTF-16 surrogate", field, reason="bad_text")
    return value


def bad_text_field(value: Any) -> str | None:
    """The path of the first string in ``value`` (nested dicts and lists) that holds a lone surrogate, else None."""
    try:
        _walk(value, max_depth=1 << 30)
    except PeerDataError as error:
        return error.field or ""
    return None


def parse_int(text: Any, *, max_digits: int = MAX_INT_DIGITS) -> int | None:
    """The integer ``text`` spells, or None: never an exception.

    An ``int`` (not a bool) is taken as it is when it has at most
    ``max_digits`` digits. A string must be an optional sign and 1 to
    ``max_digits`` ASCII digits, with no other character (``"--16"``,
    ``"²"``, ``" 16"`` and a 5,000-digit string are all None).
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text if abs(text) < 10**max_digits else None  # str() of a huge int raises past 4300 digits
    if not isinstance(text, str):
        return None
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (0 < len(digits) <= max_digits) or not digits.isascii() or not digits.isdigit():
        return None
    return int(text)


def _escaped(text: str) -> str:
    """``text`` with each lone surrogate written as its visible ``\\udXXX`` escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def sanitise(value: Any) -> tuple[Any, bool]:
    """``(copy of value fit for any store, whether anything had to change)``.

    Strings (keys too) keep every valid character; a lone surrogate becomes its
    visible escape (``\\ud800``), so the original can still be read. A
    non-finite float becomes the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"``. Tuples become lists; anything else is kept.
    """
    changed = False

    def clean(item):
        nonlocal changed
        if isinstance(item, str):
            if _has_surrogate(item):
                changed = True
                return _escaped(item)
            return item
        if isinstance(item, float) and not math.isfinite(item):
            changed = True
            return "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
        if isinstance(item, dict):
            return {clean(k): clean(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(v) for v in item]
        return item

    return clean(value), changed


#: the reasons an adapter may count a message as ignored (the metric's label values)
#: (``over_capacity``: a connection or call refused because a cap such as ``max_calls`` was reached)
#: (``rate_limited``: a message past a connection's :class:`MessageRate`, the connection closed for it)
IGNORED_REASONS = frozenset({"unknown", "malformed", "bad_text", "out_of_state", "unauthenticated", "oversized",
                             "over_capacity", "rate_limited"})


def ignored_counter(registry):
    """``gateway_ignored_messages_total{adapter,reason}`` on ``registry`` (shared by every adapter)."""
    from prometheus_client import Counter

    from gateway.metrics import define_metric

    return define_metric(
        registry,
        Counter,
        "ignored_messages",
        "Messages from peers that were ignored or refused, by adapter and reason.",
        ["adapter", "reason"],
    )


class MessageRate:
    """A token bucket: at most ``burst`` messages at once, refilled at ``rate`` messages a second.

    One per connection: the adapter calls :meth:`allow` for each message before it handles it,
    and what it does with a ``False`` (close the connection, drop the message) is its own. A
    peer that keeps to the rate is never refused; a flood gets ``burst`` messages through, then
    ``rate`` a second. No timer is kept: the bucket refills from the clock when asked.

    :param clock: ``IReactorTime`` (``seconds()``).
    """

    def __init__(self, clock, rate: float, burst: int):
        if not (rate > 0 and burst >= 1):
            raise ValueError(f"a MessageRate needs rate > 0 and burst >= 1, not {rate!r} and {burst!r}")
        self._clock = clock
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._when = clock.seconds()
        #: messages refused so far
        self.refused = 0

    def allow(self) -> bool:
        """Whether one more message may be handled now (it takes a token if so)."""
        now = self._clock.seconds()
        if now > self._when:
            self._tokens = min(float(self.burst), self._tokens + (now - self._when) * self.rate)
        self._when = now
        if self._tokens >= 1.0 - 1e-9:  # a peer keeping to the rate exactly is not refused for a rounding
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        self.refused += 1
        return False


class RateLimitedLog:
    """Log lines about one recurring thing (ignored messages, failed attempts), rate-limited.

    The first ``first`` lines of a run are logged one by one (the last of them with ``more``
    appended, when the format holds ``{more}``); after that at most one summary line per
    ``interval`` seconds says how many were suppressed. A run ends after a quiet ``interval``
    (no line at all for that long) or at :meth:`close`: what is still unsaid is summarised,
    and the next line is logged one by one again. No timer is kept: a summary is written by
    the next line after the interval, or by :meth:`close`.

    :param clock: ``IReactorTime`` (``seconds()``).
    :param logger: the :class:`~twisted.logger.Logger` the lines go to.
    """

    def __init__(self, clock, logger: Logger, *, first: int = 5, interval: float = 60.0,
                 more: str = " (further ones are summarised)"):
        self._clock = clock
        self._log = logger
        self._first = first
        self._interval = interval
        self._more = more
        self._logged = 0  # lines logged one by one in this run
        self._suppressed = 0
        self._pending: tuple[LogLevel, str, dict] | None = None  # the latest suppressed line's summary
        self._since: float | None = None  # when the last line (one by one or summary) was written
        self._last: float | None = None  # when the last line was asked for
        #: lines suppressed so far, summarised or not (for tests and metrics)
        self.suppressed_total = 0

    def emit(self, format: str, *, summary: str, level: LogLevel = LogLevel.warn, **fields) -> bool:
        """Log ``format`` with ``fields`` if the budget allows (True), else count it (False).

        ``summary`` is the format of the line that stands for the suppressed ones: it gets the
        latest suppressed line's ``fields`` plus ``count`` and ``seconds`` (since the last line
        written).
        """
        now = self._clock.seconds()
        if self._last is not None and now - self._last >= self._interval:
            self._flush(now)  # a quiet interval: the run is over
            self._logged = 0
        self._last = now
        if self._since is None:
            self._since = now
        if self._logged < self._first:
            self._logged += 1
            more = self._more if self._logged == self._first else ""
            self._log.emit(level, format, **{"more": more, **fields})
            self._since = now
            return True
        self._suppressed += 1
        self.suppressed_total += 1
        self._pending = (level, summary, fields)
        if now - self._since >= self._interval:
            self._flush(now)
        return False

    def close(self) -> None:
        """Write the summary of what is still unsaid; the next line starts a new run."""
        self._flush(self._clock.seconds())
        self._logged, self._since, self._last = 0, None, None

    flush = close

    def _flush(self, now: float) -> None:
        if self._suppressed and self._pending is not None:
            level, summary, fields = self._pending
            since = self._since if self._since is not None else now
            self._log.emit(level, summary, **{**fields, "count": self._suppressed, "seconds": now - since})
            self._since = now
        self._suppressed, self._pending = 0, None


class IgnoredBudget:
    """A per-connection budget for log lines about ignored or unknown messages.

    Every ignored message is counted in ``gateway_ignored_messages_total``; the
    lines are a :class:`RateLimitedLog`: the first ``first`` of a run are logged
    one by one, and after that at most one summary line per ``interval`` seconds
    says how many more were ignored; after a quiet interval they are logged one by
    one again. :meth:`close` (when the connection ends) logs what is still unsaid.
    """

    def __init__(
        self,
        clock,
        adapter: str,
        peer: str,
        *,
        counter=None,
        logger: Logger | None = None,
        first: int = 5,
        interval: float = 60.0,
    ):
        self._adapter = adapter
        self._peer = peer
        self._counter = counter
        self._lines = RateLimitedLog(clock, logger or log, first=first, interval=interval)
        self.total = 0

    def ignored(self, reason: str, detail: str) -> None:
        """Count one ignored message (``reason`` from :data:`IGNORED_REASONS`) and log it if the budget allows."""
        if reason not in IGNORED_REASONS:
            raise ValueError(f"unknown ignored-message reason {reason!r}")
        self.total += 1
        if self._counter is not None:
            self._counter.labels(self._adapter, reason).inc()
        self._lines.emit(
            "{adapter} peer {peer}: ignored a message ({reason}): {detail}{more}",
            summary="{adapter} peer {peer}: ignored {count} more messages in the last {seconds:.0f} s",
            adapter=self._adapter,
            peer=self._peer,
            reason=reason,
            detail=_escaped(detail[:300])[:300],
        )

    def count(self, reason: str) -> None:
        """Count one ignored message without a line of its own (the adapter logs it its own way, rate-limited)."""
        if reason not in IGNORED_REASONS:
            raise ValueError(f"unknown ignored-message reason {reason!r}")
        self.total += 1
        if self._counter is not None:
            self._counter.labels(self._adapter, reason).inc()

    def close(self) -> None:
        """Log the summary of what is still unsaid (the connection is ending)."""
        self._lines.close()


def budget_factory(clock, adapter: str, registry=None, **options) -> Callable[[str], IgnoredBudget]:
    """A function making an :class:`IgnoredBudget` for each new connection of ``adapter`` (by its peer's name)."""
    counter = ignored_counter(registry) if registry is not None else None
    return lambda peer: IgnoredBudget(clock, adapter, peer, counter=counter, **options)
