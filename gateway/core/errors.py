"""The typed errors of the call core.

Every command of the registry fails with a :class:`CallError`. Each class
carries a short ``code`` and the ``http_status`` the admin API answers with;
the message is readable text a CTI agent or an operator may be shown, so it
names the call, the state or the driver involved.
"""

from __future__ import annotations

__all__ = [
    "CallError",
    "ConferenceFailed",
    "DriverError",
    "ExtensionBusy",
    "IllegalState",
    "InvalidArgument",
    "NoRoute",
    "TransferFailed",
    "UnknownCall",
    "UnknownExtension",
    "UnknownParty",
]


class CallError(Exception):
    """Base of the core's errors: ``str(error)`` is the readable message."""

    code = "call_error"
    http_status = 500

    @property
    def message(self) -> str:
        return str(self)


class UnknownCall(CallError):
    code = "unknown_call"
    http_status = 404

    def __init__(self, call_id: str):
        super().__init__(f"no call with id {call_id!r}")
        self.call_id = call_id


class UnknownExtension(CallError):
    code = "unknown_extension"
    http_status = 404

    def __init__(self, extension: str):
        super().__init__(f"no extension with id {extension!r}")
        self.extension = extension


class UnknownParty(CallError):
    code = "unknown_party"
    http_status = 404

    def __init__(self, call_id: str, number: str):
        super().__init__(f"call {call_id} has no party with number {number!r}")
        self.call_id = call_id
        self.number = number


class IllegalState(CallError):
    """A command that the call (or one of its legs) cannot take in its state."""

    code = "illegal_state"
    http_status = 409

    def __init__(self, command: str, state: str, what: str = "call"):
        super().__init__(f"cannot {command}: the {what} is {state}")
        self.command = command
        self.state = state


class InvalidArgument(CallError):
    code = "invalid_argument"
    http_status = 400


class DriverError(CallError):
    """A driver refused or failed an operation."""

    code = "driver_error"
    http_status = 502

    def __init__(self, driver: str, message: str):
        super().__init__(f"driver {driver}: {message}")
        self.driver = driver
        self.reason = message


class NoRoute(CallError):
    code = "no_route"
    http_status = 404

    def __init__(self, did: str):
        super().__init__(f"no route for DID {did!r}")
        self.did = did


class ExtensionBusy(CallError):
    code = "extension_busy"
    http_status = 409

    def __init__(self, extension: str, call_id: str):
        super().__init__(f"extension {extension} is busy with call {call_id}")
        self.extension = extension
        self.call_id = call_id


class TransferFailed(CallError):
    code = "transfer_failed"
    http_status = 409

    def __init__(self, reason: str):
        super().__init__(f"transfer failed: {reason}")
        self.reason = reason


class ConferenceFailed(CallError):
    code = "conference_failed"
    http_status = 409

    def __init__(self, reason: str):
        super().__init__(f"conference failed: {reason}")
        self.reason = reason
