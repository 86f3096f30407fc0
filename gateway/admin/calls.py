"""The calls API: live calls and every call command over the admin router.

- ``GET /api/calls`` (``?extension=ID``: that extension's calls, live and
  recently released): ``{"calls": [call, ...]}``;
- ``GET /api/calls/{id}``: one call (live or recently released);
- ``POST /api/calls`` ``{"extension", "number", "attributes"?, "if_busy"?}``: click-to-dial, 201 with
  the call; ``if_busy`` is the core's policy while the extension has a live call: ``refuse`` (the
  default, 409 extension_busy) or ``replace`` (that call is hung up first);
- ``POST /api/calls/{id}/{action}``: ``hangup``, ``answer``, ``reject``, ``cancel`` (give up an
  unanswered call: an alerting one is rejected, one still dialling is hung up), ``hold``,
  ``retrieve``, ``mute``, ``unmute``, ``flush`` (barge-in) (no body, or ``{}``); ``transfer`` and ``conference``
  ``{"destination"}``; ``dtmf`` ``{"digits", "duration_ms"?, "gap_ms"?}``;
  ``remove_party`` ``{"number"}``: the call after the command;
- consult (docs/core.md): ``POST /api/calls/{id}/consult`` ``{"number"}`` holds the call's parties
  and dials ``number`` (an extension id or a number) as a consult call of the same extension: 201
  with the *consult* call (``consult_of`` names ``{id}``); ``alternate``, ``transfer-to-consult`` and
  ``conference-in-consult`` (no body; ``{id}`` is the primary or its consult): ``alternate`` answers
  with ``{id}`` after the swap, the other two with the primary after the join. Releasing the consult
  is ``hangup`` of the consult call;
- ``DELETE /api/calls/{id}``: forget the call (a live one is hung up first);
- ``POST /api/sim/inbound`` ``{"caller_id", "did", "hang_up_after"?}`` when the simulated
  network is in use: a simulated caller dials in (and hangs up ``hang_up_after`` seconds
  after being answered: above 0 and at most a day), 201 with the call.

Every body is read through :meth:`ApiRequest.json` (the boundary policy of
``gateway.boundary``): bad text, non-finite numbers, deep nesting and keys the
endpoint does not read are a 400 naming the field or key.

A call is rendered by ``CallSnapshot.to_dict()``. In cluster mode (``[cluster]``) the registry is the
cluster's ``ICallControl``: the listing is cluster-wide (this node's calls and the other nodes'), a
command for another node's call is routed to its owner, and each call also names ``node``, the node
that holds its media. The registry's errors carry
their own status and code (404 unknown call, 409 illegal in this state, ...),
which the router renders as ``{"error": code, "message": ...}``.
"""

from __future__ import annotations

import typing

from gateway.admin.api import ApiError, ApiRequest, ApiResponse

__all__ = ["register_calls_api"]

#: the actions taking no body, and the registry command each one runs
_SIMPLE = ("hangup", "answer", "reject", "cancel", "hold", "retrieve", "mute", "unmute", "flush")
_BY = {"hangup": {"by": "api"}, "reject": {"by": "api"}, "cancel": {"by": "api"}}
#: the consult actions taking no body, and the registry command each one runs (with by="api")
_CONSULT = {"alternate": "alternate", "transfer-to-consult": "transfer_to_consult",
            "conference-in-consult": "conference_in_consult"}
#: the longest a simulated caller stays on the line after being answered (``hang_up_after``), seconds
MAX_HANG_UP_AFTER = 86400.0
#: a DTMF tone's duration and the gap between tones, ms: the core's limits (Registry.send_dtmf checks them again)
DTMF_DURATION_MS = (20, 1000)
DTMF_GAP_MS = (0, 1000)


def register_calls_api(api, registry, sim=None) -> None:
    """Add the calls routes to ``api`` (an ApiRouter) over ``registry`` (the core's
    :class:`~gateway.core.interfaces.ICallControl`); ``sim``: the simulated network, if in use."""
    calls = _CallsApi(registry, sim)
    api.route("GET", "/api/calls", calls.list)
    api.route("POST", "/api/calls", calls.originate)
    api.route("GET", "/api/calls/{id}", calls.get)
    api.route("DELETE", "/api/calls/{id}", calls.dispose)
    api.route("POST", "/api/calls/{id}/{action}", calls.action)
    if sim is not None:
        api.route("POST", "/api/sim/inbound", calls.sim_inbound)


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{name!r} is required and must be a non-empty string")
    return value


def _shown(value) -> str:
    """``value`` for an error message, never thousands of digits long."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        return "a number of more than 40 digits"
    return repr(value)[:40]


def _integer(body: dict, name: str, default: int, low: int, high: int) -> int:
    """A whole number of milliseconds from ``low`` to ``high``; a 400 naming ``name`` otherwise."""
    value = body.get(name, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"{name!r} must be a whole number of milliseconds from {low} to {high}, "
                            f"got {_shown(value)}", field=name)
    return value


def _seconds(body: dict, name: str, high: float) -> float | None:
    """A number of seconds above 0 and at most ``high``, or None when absent; a 400 naming ``name`` otherwise.

    Bounded so that it can be given to ``callLater`` (a 4000-digit integer overflowed a float there,
    and 1e308 s never ends).
    """
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise ApiError(400, f"{name!r} must be a number of seconds above 0 and at most {high:g}, got {_shown(value)}",
                       field=name)
    return float(value)


def _rendered(snapshot) -> dict:
    return snapshot.to_dict()


def owner_of(registry, call_id: str) -> str | None:
    """The node holding a call's media, in cluster mode (the cluster's ICallControl knows the other
    nodes' calls as ``remote``: id -> (owner, snapshot)); None for a one-process gateway."""
    node_id = getattr(registry, "node_id", None)
    if node_id is None:
        return None
    local_has = getattr(registry, "local_has", None)
    if local_has is not None and local_has(call_id):
        return node_id
    entry = getattr(registry, "remote", {}).get(call_id)
    return entry[0] if entry else node_id


class _CallsApi:
    def __init__(self, registry, sim) -> None:
        self._registry = registry
        self._sim = sim
        #: action -> the keys its body may have (every other key is a 400 naming it)
        self._keys: dict[str, tuple[str, ...]] = {
            "transfer": ("destination",), "conference": ("destination",), "remove_party": ("number",),
            "consult": ("number",),
            "dtmf": ("digits", "duration_ms", "gap_ms"),
        }
        self._actions: dict[str, typing.Callable] = {
            **{name: self._simple(name) for name in _SIMPLE},
            "transfer": lambda call_id, body: registry.transfer(call_id, _text(body, "destination"), by="api"),
            "conference": lambda call_id, body: registry.conference(call_id, _text(body, "destination"), by="api"),
            "remove_party": lambda call_id, body: registry.remove_party(call_id, _text(body, "number"), by="api"),
            **{name: self._consult_action(command) for name, command in _CONSULT.items()},
            # 201 with the new consult call (rendered here, not by action())
            "consult": lambda call_id, body: registry.consult(call_id, _text(body, "number"), by="api").addCallback(
                lambda call: ApiResponse(201, _rendered(call))),
            "dtmf": lambda call_id, body: registry.send_dtmf(
                call_id, _text(body, "digits"), _integer(body, "duration_ms", 100, *DTMF_DURATION_MS),
                _integer(body, "gap_ms", 50, *DTMF_GAP_MS),
            ),
        }

    def _render(self, snapshot) -> dict:
        data = _rendered(snapshot)
        owner = owner_of(self._registry, snapshot.call_id)
        if owner is not None:
            data["node"] = owner
        return data

    def _consult_action(self, name: str):
        command = getattr(self._registry, name)
        return lambda call_id, body: command(call_id, by="api")

    def _simple(self, name: str):
        command = getattr(self._registry, name)
        return lambda call_id, body: command(call_id, **_BY.get(name, {}))

    def list(self, request: ApiRequest) -> dict:
        extension = request.query.get("extension")
        found = self._registry.calls_for(extension) if extension else self._registry.calls()
        return {"calls": [self._render(c) for c in found]}

    def get(self, request: ApiRequest) -> dict:
        return self._render(self._registry.call(request.params["id"]))

    def originate(self, request: ApiRequest):
        body = request.json(known=("extension", "number", "attributes", "if_busy"))
        attributes = body.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ApiError(400, "'attributes' must be an object")
        if_busy = _text(body, "if_busy") if "if_busy" in body else "refuse"
        d = self._registry.originate(_text(body, "extension"), _text(body, "number"), attributes=attributes,
                                     if_busy=if_busy, by="api")
        return d.addCallback(lambda call: ApiResponse(201, _rendered(call)))

    def action(self, request: ApiRequest):
        name = request.params["action"]
        run = self._actions.get(name)
        if run is None:
            raise ApiError(404, f"no call action {name!r} (known: {', '.join(sorted(self._actions))})")
        if name == "consult":
            return run(request.params["id"], request.json(known=self._keys[name]))
        if name in _SIMPLE or name in _CONSULT:
            request.no_body()
            body = {}
        else:
            body = request.json(known=self._keys[name])
        return run(request.params["id"], body).addCallback(_rendered)

    def dispose(self, request: ApiRequest):
        request.no_body()
        call_id = request.params["id"]
        return self._registry.dispose(call_id, by="api").addCallback(lambda _: {"call_id": call_id, "disposed": True})

    def sim_inbound(self, request: ApiRequest) -> ApiResponse:
        body = request.json(known=("caller_id", "did", "hang_up_after"))
        hang_up_after = _seconds(body, "hang_up_after", MAX_HANG_UP_AFTER)
        leg = self._sim.place_inbound(_text(body, "caller_id"), _text(body, "did"), hang_up_after=hang_up_after)
        return ApiResponse(201, _rendered(self._registry.call(leg.events.call_id)))
