"""The bad-input corpus: hostile frames for every ingress and outgoing link, as data (see README.md)."""

from __future__ import annotations

import json
import pathlib

import attrs

HERE = pathlib.Path(__file__).resolve().parent

__all__ = ["Case", "build_frame", "his_stream", "load"]


@attrs.frozen
class Case:
    """One hostile input: what to send, and what the gateway must do about it."""

    name: str
    frames: tuple
    expect: str
    extra: dict = attrs.field(factory=dict, eq=False)

    @property
    def outcome(self) -> str:
        """The expectation's keyword (``close``, ``dropped``, ``http`` ...)."""
        return self.expect.partition(":")[0]

    @property
    def detail(self) -> str:
        """What follows the keyword's colon (``1007`` of ``close:1007``), or ``""``."""
        return self.expect.partition(":")[2]

    def built(self) -> list[tuple[bytes, bool]]:
        """Each frame as ``(bytes, is_binary)``."""
        return [build_frame(frame) for frame in self.frames]


def build_frame(frame) -> tuple[bytes, bool]:
    """A corpus frame as ``(bytes, is_binary)``: a string is UTF-8 text; ``hex`` raw bytes; ``repeat`` built."""
    if isinstance(frame, str):
        return frame.encode("utf-8"), False
    if "hex" in frame:
        return bytes.fromhex(frame["hex"].replace(" ", "")), True
    if "repeat" in frame:
        text = frame.get("text", "") + frame["repeat"] * int(frame["times"]) + frame.get("then", "")
        return text.encode("utf-8"), False
    raise ValueError(f"a corpus frame is a string, a hex or a repeat object, not {frame!r}")


def his_stream(case: Case, conversation: str | None) -> bytes:
    """What a hostile HIS bridge writes for ``case``: each text frame with its 4-byte big-endian length
    (``{conversation}`` in it replaced by ``conversation``), each hex frame as it is."""
    data = b""
    for frame in case.frames:
        payload, raw = build_frame(frame)
        if raw:
            data += payload
        else:
            payload = payload.replace(b"{conversation}", (conversation or "").encode("utf-8"))
            data += len(payload).to_bytes(4, "big") + payload
    return data


def load(name: str) -> list[Case]:
    """The cases of ``tests/corpus/<name>.json``."""
    document = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    cases = []
    for raw in document["cases"]:
        raw = dict(raw)
        frames = raw.pop("frames", None)
        if frames is None:
            frames = [raw.pop("frame")] if "frame" in raw else []
        cases.append(Case(name=raw.pop("name"), frames=tuple(frames), expect=raw.pop("expect"), extra=raw))
    names = [case.name for case in cases]
    if len(names) != len(set(names)):
        raise ValueError(f"{name}.json repeats a case name")
    return cases
