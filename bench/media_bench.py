"""Media plane benchmark: CPU cost per frame of the relay, pacing and backpressure paths.

Run as ``python -m bench media [--frames N] [--repeat R]``. Everything runs
in-process on a ``task.Clock``, so what is measured is the code, not sleeps:
CPU seconds come from ``time.process_time``. Each case is reported as
nanoseconds per frame, frames per CPU-second, and as a ratio to a baseline
measured in the same process: a bare function call passing the bytes along.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import typing

from twisted.internet.task import Clock

from gateway.media import PCM16, ULAW, Frame, FrameFeeder, MediaPort, silence, tone
from gateway.media.mixer import Conference
from gateway.media.testing import FrameCollector

#: simulated seconds per frame
TICK = 0.020
#: frames queued ahead of a steady stream, so that each tick finds one waiting
#: (input in exact lock-step with the ticks would find the queue empty at every
#: other tick and measure the restart path instead)
PRIMED = 2


def _null(data) -> None:
    pass


def case_baseline(frames: int) -> int:
    """A bare function call passing the bytes along (the unit of the ratios)."""
    payload = silence(PCM16)

    def relay(data, sink=_null):
        sink(data)

    for _ in range(frames):
        relay(payload)
    return frames


def case_clock(frames: int) -> int:
    """The scheduler's own share: one task.Clock callLater and advance per frame, nothing else."""
    clock = Clock()
    for _ in range(frames):
        clock.callLater(TICK, _null, None)
        clock.advance(TICK)
    return frames


def _bridge(frames: int, codec_b: str) -> int:
    clock = Clock()
    a, b = MediaPort(clock, PCM16, "a"), MediaPort(clock, codec_b, "b")
    b.set_wire(_null)
    a.source.connect(b.sink)
    payload = next(tone(425))
    a.receive(payload * PRIMED)
    for _ in range(frames):
        a.receive(payload)
        clock.advance(TICK)
    played = b.playout.frames_played
    a.close()
    b.close()
    return played


def case_bridge_same_codec(frames: int) -> int:
    """Bridge relay, pcm16 -> pcm16: receive, re-frame, frame, sink, queue, paced write."""
    return _bridge(frames, PCM16)


def case_bridge_transcoding(frames: int) -> int:
    """Bridge relay, pcm16 -> ulaw: the same plus one G.711 encode per frame."""
    return _bridge(frames, ULAW)


def case_inbound(frames: int) -> int:
    """Inbound path alone: port.receive(20 ms) -> Frame -> consumer.write."""
    port = MediaPort(Clock(), PCM16, "in")
    collector = FrameCollector()
    port.source.connect(collector)
    payload = silence(PCM16)
    for _ in range(frames):
        port.receive(payload)
        collector.frames.clear()
    port.close()
    return frames


def case_paced_playout(frames: int) -> int:
    """Pacing path alone: sink.write(frame), then one deadline-scheduled write to the wire."""
    clock = Clock()
    port = MediaPort(clock, PCM16, "out")
    port.set_wire(_null)
    frame = Frame(PCM16, 8000, 0, 0, False, silence(PCM16))
    write = port.sink.write
    for _ in range(PRIMED):
        write(frame)
    for _ in range(frames):
        write(frame)
        clock.advance(TICK)
    played = port.playout.frames_played
    port.close()
    return played


def case_backpressure(frames: int) -> int:
    """Producer/consumer cycle: a feeder filling playout to high water, paused, resumed at low water."""
    clock = Clock()
    port = MediaPort(clock, PCM16, "bp")
    port.set_wire(_null)
    FrameFeeder(tone(425), PCM16).connect(port.sink)
    for _ in range(frames):
        clock.advance(TICK)
    played = port.playout.frames_played
    port.close()
    return played


def case_overflow(frames: int) -> int:
    """Real-time source ignoring pauses into a stalled wire: every write drops the oldest frame."""
    port = MediaPort(Clock(), PCM16, "full")
    port.playout.pauseProducing()
    frame = Frame(PCM16, 8000, 0, 0, False, silence(PCM16))
    write = port.sink.write
    for _ in range(frames):
        write(frame)
    port.close()
    return frames


def case_mix3(frames: int) -> int:
    """Three-party conference: per round 3 frames in, 3 mix-minus frames out (reported per frame in)."""
    clock = Clock()
    ports = [MediaPort(clock, PCM16, f"p{n}") for n in range(3)]
    conference = Conference(clock)
    for port in ports:
        port.set_wire(_null)
        conference.add(port)
    payloads = [next(tone(freq)) for freq in (300, 500, 700)]
    rounds = frames // 3
    for _ in range(rounds):
        for port, payload in zip(ports, payloads):
            port.receive(payload)
        clock.advance(TICK)
    conference.stop()
    for port in ports:
        port.close()
    return rounds * 3


CASES: list[typing.Callable[[int], int]] = [
    case_baseline,
    case_clock,
    case_bridge_same_codec,
    case_bridge_transcoding,
    case_inbound,
    case_paced_playout,
    case_backpressure,
    case_overflow,
    case_mix3,
]


def measure(case: typing.Callable[[int], int], frames: int, repeat: int, min_seconds: float = 0.05) -> float:
    """Best CPU seconds per frame over ``repeat`` runs; a run calls ``case`` until ``min_seconds`` passed."""
    best = float("inf")
    for _ in range(repeat):
        done = 0
        start = time.process_time()
        while (elapsed := time.process_time() - start) < min_seconds:
            done += case(frames)
        best = min(best, elapsed / done)
    return best


def machine() -> str:
    return (
        f"{platform.python_implementation()} {platform.python_version()} on {platform.platform()},"
        f" {platform.machine()} {platform.processor() or ''}".rstrip()
        + f", {os.cpu_count()} CPUs"
    )


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench media", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000, help="frames per call of a case (default 10000)")
    parser.add_argument("--repeat", type=int, default=15, help="runs per case, the best is kept (default 15)")
    options = parser.parse_args(argv)
    results = [(case, measure(case, options.frames, options.repeat)) for case in CASES]
    baseline = results[0][1]
    print(f"Machine: {machine()}")
    print(f"runs of >= 0.05 CPU-s in calls of {options.frames} frames, best of {options.repeat} runs,"
          " CPU time from time.process_time\n")
    print("| case | ns/frame | frames per CPU-second | x baseline |")
    print("|---|---:|---:|---:|")
    for case, seconds in results:
        name = case.__name__.removeprefix("case_")
        doc = case.__doc__.split(":")[0].rstrip(".")
        print(f"| {name}: {doc} | {seconds * 1e9:,.0f} | {1 / seconds:,.0f} | {seconds / baseline:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
