"""The OpenMethods HIS link framing: a 4-byte unsigned length, then that many bytes of UTF-8 JSON.

Used by both ends of the link: the gateway's Bridge Client and the processor-bridge simulator.
The vendor does not state the byte order of the length; the bridge is Java, so the default is
big-endian (network order) and ``"little"`` can be configured.

Robustness rules, because a single bad frame must not cost an agent desktop its link:

- A frame longer than ``max_frame_size`` is *skipped*: its length is known, so exactly that many
  bytes are discarded (without buffering them) and the next frame is read normally.
- Every frame is decoded through :func:`gateway.boundary.load_json` (strict UTF-8, no lone
  surrogates, finite numbers, nesting at most 32 deep). A frame it refuses, or JSON that is not an
  object, is reported and not delivered; the framing is intact, so the link carries on. A frame that
  is valid JSON whose only fault is text holding a lone surrogate is handed to
  :meth:`FramedJSONProtocol.badTextReceived` with the decoded document, so that the Bridge Client
  can still answer the request it carries (the default drops it like the others).
- Only a length above :data:`ABSOLUTE_MAX_FRAME_SIZE` (64 MiB) drops the link: no sane peer sends a
  JSON message that large, so the stream is out of step (wrong byte order, a peer speaking another
  protocol, corruption) and nothing after that point can be trusted.

Every rejected frame is reported to :meth:`FramedJSONProtocol.frameRejected` (a hook, so the
simulator can count them as protocol violations) after being logged with the peer named: through the
connection's :class:`gateway.boundary.IgnoredBudget` when it has one (:attr:`FramedJSONProtocol.budget`,
so a flood of bad frames cannot become a flood of log lines), else one warning each.
"""

import json

from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel

from gateway.boundary import PeerDataError, load_json

#: Bytes in the length prefix.
LENGTH_SIZE = 4

#: A frame length above this is a broken stream, not a big message: the link is dropped.
ABSOLUTE_MAX_FRAME_SIZE = 64 * 1024 * 1024

#: Default largest frame delivered; longer frames are skipped.
DEFAULT_MAX_FRAME_SIZE = 1024 * 1024

BYTE_ORDERS = ("big", "little")

log = Logger()


def encode_frame(obj, byteorder="big"):
    """Return the bytes of one frame carrying ``obj`` as compact UTF-8 JSON."""
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return len(payload).to_bytes(LENGTH_SIZE, byteorder) + payload


def describe_peer(transport):
    """A short readable name for the far end of ``transport`` (``host:port`` when it has one)."""
    peer = transport.getPeer() if transport is not None else None
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return f"{host}:{port}" if host is not None else str(peer)


class FramedJSONProtocol(Protocol):
    """Length-prefixed JSON messages over a stream; subclasses override :meth:`messageReceived`.

    :param byteorder: ``"big"`` (default) or ``"little"``: the byte order of the length prefix.
    :param max_frame_size: the largest frame delivered; longer ones are skipped and reported.
    """

    def __init__(self, byteorder="big", max_frame_size=DEFAULT_MAX_FRAME_SIZE):
        if byteorder not in BYTE_ORDERS:
            raise ValueError(f"byteorder must be one of {BYTE_ORDERS}, not {byteorder!r}")
        if not 0 < max_frame_size <= ABSOLUTE_MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be between 1 and {ABSOLUTE_MAX_FRAME_SIZE}, not {max_frame_size}")
        self.byteorder = byteorder
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._skipping = 0
        self._broken = False
        #: the connection's IgnoredBudget (set by a subclass), through which rejected frames are logged
        self.budget = None

    @property
    def peer(self):
        """The far end, as a readable string for logs."""
        return describe_peer(self.transport)

    # -- hooks ---------------------------------------------------------------------------------

    def messageReceived(self, obj):
        """Called with each JSON object received, as a ``dict``."""
        raise NotImplementedError

    def frameRejected(self, reason):
        """Called (after logging) with a readable ``reason`` for each frame not delivered."""

    def badTextReceived(self, document, error):
        """Called with the decoded ``document`` of a frame refused only for text holding a lone
        surrogate (``error`` is the :class:`~gateway.boundary.PeerDataError` naming the field).
        The default rejects the frame like any other refused one."""
        self._reject(f"frame refused: {error}; dropped", reason="bad_text")

    # -- sending -------------------------------------------------------------------------------

    def sendMessage(self, obj):
        """Send one JSON-serialisable object as a frame."""
        self.transport.write(encode_frame(obj, self.byteorder))

    # -- receiving -----------------------------------------------------------------------------

    def dataReceived(self, data):
        if self._broken:
            return
        self._buffer += data
        consumed = self._consume()
        del self._buffer[:consumed]

    def _consume(self):
        """Deliver every complete frame in the buffer; return how many bytes were used up."""
        buffer, offset = self._buffer, 0
        while not self._broken:
            if self._skipping:
                step = min(self._skipping, len(buffer) - offset)
                self._skipping -= step
                offset += step
                if self._skipping:
                    break
            if len(buffer) - offset < LENGTH_SIZE:
                break
            length = int.from_bytes(buffer[offset : offset + LENGTH_SIZE], self.byteorder)
            if length > ABSOLUTE_MAX_FRAME_SIZE:
                self._break(length)
                break
            if length > self.max_frame_size:
                offset += LENGTH_SIZE
                self._skipping = length
                self._reject(
                    f"frame of {length} bytes exceeds the {self.max_frame_size}-byte limit; skipped", reason="oversized"
                )
                continue
            end = offset + LENGTH_SIZE + length
            if len(buffer) < end:
                break
            frame = bytes(buffer[offset + LENGTH_SIZE : end])
            offset = end
            self._deliver(frame)
        return offset

    def _break(self, length):
        self._broken = True
        self._reject(
            f"frame length {length} is over the absolute limit of {ABSOLUTE_MAX_FRAME_SIZE}:"
            " the stream is out of step; dropping the link",
            LogLevel.error,
        )
        self.transport.loseConnection()

    def _reject(self, text, level=LogLevel.warn, reason="malformed"):
        """Log ``text`` (through the budget, as ``reason``, when there is one) and report the frame."""
        if self.budget is not None and level is not LogLevel.error:
            self.budget.ignored(reason, text)
        else:
            log.emit(level, "HIS peer {peer}: {reason}", peer=self.peer, reason=text)
        self.frameRejected(text)

    def _deliver(self, frame):
        try:
            obj = load_json(frame)
        except PeerDataError as e:
            if e.document is not None:
                try:
                    self.badTextReceived(e.document, e)
                except Exception:
                    log.failure("HIS peer {peer}: handling a refused frame failed", peer=self.peer)
                return
            self._reject(f"frame of {len(frame)} bytes refused: {e}; dropped", reason=e.reason)
            return
        if not isinstance(obj, dict):
            self._reject(f"frame holds a JSON {type(obj).__name__}, not an object; dropped")
            return
        try:
            self.messageReceived(obj)
        except Exception:
            log.failure("HIS peer {peer}: handling a message failed", peer=self.peer)
