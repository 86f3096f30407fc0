"""The media plane: frames, codecs, ports with producer/consumer backpressure, pacing, and media apps.

Public API (all importable from ``gateway.media``)::

    Frame(codec, rate, seq, ts, marker, payload)      # slotted attrs; seq/ts wrap as in RTP
    PCM16, ULAW, ALAW, RATE (8000), FRAME_MS (20)
    frame_size(codec, ms=20) -> int                   # 320 / 160 / 160 bytes for 20 ms
    transcode(payload, src, dst) -> bytes; converter(src, dst) -> callable  (resolve once, call per frame)
    silence(codec, ms=20) -> bytes

    MediaPort(clock, codec="pcm16", name="", queue_ms=1000, on_drop=None, jitter_ms=0)   # one per call leg
      # on_drop(where, count): a full queue dropped frames, where = "playout" | "inbound" | "mix",
      #   or the playout's jitter buffer trimmed a live backlog: "trim_silence" | "trim_oldest"
      # jitter_ms > 0: a live source (port.source of a bridge/echo) is pre-buffered to that target and a
      #   standing backlog above it is trimmed (see gateway.media.playout); 0: the plain paced FIFO
      #   (port.on_drop; port.drop_hook(where) -> hook(count) or None, for an app's own queue of the port's frames)
    MediaPorts(queue_ms=1000, on_drop=None, jitter_ms=0).port(clock, codec, name) -> MediaPort
      # the one port factory drivers use (ctx.media_ports in the daemon; see gateway.media.metrics)
      # driver side (the wire)
      port.receive(data)        # raw audio from the party, any length -> 20 ms frames -> port.source
      port.set_wire(write)      # write(bytes) gets paced outbound audio, one 20 ms payload at a time
      port.playout              # IPushProducer: transport.registerProducer(port.playout, True)
      port.upstream = producer  # the driver's transport: paused while inbound frames back up
      # core / app side
      port.source               # IPushProducer of Frames: port.source.connect(consumer) / .disconnect()
      port.sink                 # IConsumer of Frames toward the party (any codec, any length)
      port.flush()              # barge-in: drop everything buffered toward the party
      port.playout.checkpoint() # Deferred: fires once what is queued so far has been played
      port.muted = True         # discard the party's audio
      port.close()
      # counters (plain attributes): port.playout.frames_played, .frames_dropped, .frames_flushed,
      #   .frames_trimmed, .underruns; port.source.frames_dropped

    dtmf_frames(digit, duration_ms=100, codec="pcm16") -> [Frame]   # write to port.sink, then
                                                                      # port.playout.checkpoint()
    tone(freqs, codec), cadence(freqs, on_ms, off_ms, codec), speech_like(codec, seed),
    silence_payloads(codec), wav_payloads(path, codec, loop=False)  # iterators of 20 ms payloads
    PacedSource(clock, payloads, codec)   # IPushProducer, one frame per 20 ms: simulated parties
    FrameFeeder(payloads, codec)          # IPushProducer, as fast as the consumer allows
    BytesConsumer(write)                  # IConsumer passing frame payloads to write(bytes),
                                          #   e.g. PacedSource(...).connect(BytesConsumer(port.receive))

    IMediaApp: name, description, start(ports, clock, arg=None, state_dir=None) -> IMediaSession
    IMediaSession: finished (Deferred), stop();  IConference adds add(port), remove(port)
    apps (plugins in plugins/media_apps.py): echo, play, record, bridge, mix, hold
    errors: MediaError > UnsupportedFormat, AppArgumentError, PortBusy

Transcoding happens where a frame of one codec meets a port of another (a
sink, the mixer, a recorder), never when codecs match. Fakes for tests are in
:mod:`gateway.media.testing`.
"""

from gateway.media.codecs import ALAW, FRAME_MS, PCM16, RATE, ULAW, converter, frame_size, silence, transcode
from gateway.media.errors import AppArgumentError, MediaError, PortBusy, UnsupportedFormat
from gateway.media.frame import Frame
from gateway.media.interfaces import IConference, IMediaApp, IMediaSession
from gateway.media.port import MediaPort, MediaPorts
from gateway.media.producers import BytesConsumer, FrameFeeder, PacedSource
from gateway.media.tones import cadence, dtmf_frames, silence_payloads, speech_like, tone
from gateway.media.wav import wav_payloads

__all__ = [
    "ALAW",
    "FRAME_MS",
    "PCM16",
    "RATE",
    "ULAW",
    "AppArgumentError",
    "BytesConsumer",
    "Frame",
    "FrameFeeder",
    "IConference",
    "IMediaApp",
    "IMediaSession",
    "MediaError",
    "MediaPort",
    "MediaPorts",
    "PacedSource",
    "PortBusy",
    "UnsupportedFormat",
    "cadence",
    "converter",
    "dtmf_frames",
    "frame_size",
    "silence",
    "silence_payloads",
    "speech_like",
    "tone",
    "transcode",
    "wav_payloads",
]
