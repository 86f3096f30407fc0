"""``gatewayctl``: the running gateway's admin API from a shell.

::

    gatewayctl status                      readiness, then each adapter's live status
    gatewayctl calls [--extension ID]      the live calls
    gatewayctl call ID                     one call and its legs
    gatewayctl dial EXTENSION NUMBER       click-to-dial: ring the extension's phone, then NUMBER
    gatewayctl hangup ID                   end a call
    gatewayctl consult ID NUMBER           hold call ID's parties and dial NUMBER as its consult call
    gatewayctl alternate ID                swap which of a call and its consult is held
    gatewayctl transfer-to-consult ID      join the call's parties with its consulted party, drop the agent
    gatewayctl conference-in-consult ID    join the call, its consulted party and the agent
    gatewayctl cdrs [--since T] [--limit N]
    gatewayctl sms send NUMBER TEXT        an SMS to NUMBER: stored, then the chat connector's SMS
                                           transport sends it
    gatewayctl sms receive NUMBER TEXT     an SMS from NUMBER reaches the gateway (the chat connector's
                                           inbound route, as a phone network's webhook would deliver it)
    gatewayctl cluster                     the cluster's nodes: load, draining, the leases each holds
    gatewayctl drain NODE                  NODE drains: no new calls, links handed over, live calls
                                           until [cluster] drain_timeout (asked through any node)

Where the daemon is: ``--url``, else ``http://`` (``https://`` for ``ssl:``) and the host and port of
``[admin] listen`` in the configuration (``--config PATH``, else the embedded defaults, as
``twistd -n gateway`` runs without ``--config``). The token: ``--token``, else ``[admin] token``,
else the file ``<state_dir>/admin-token`` the daemon generated (a relative ``state_dir`` is taken
from the working directory, as the daemon does).

Readable tables by default; ``--json`` prints the API's JSON for scripts. Every failure is one line
on stderr and an exit status of its own (see the ``EXIT_*`` constants).
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import sys
import urllib.error
import urllib.parse
import urllib.request

import attrs

__all__ = [
    "EXIT_DOWN", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_REFUSED", "EXIT_TOKEN", "EXIT_USAGE",
    "AdminClient", "CtlError", "admin_token", "admin_url", "main",
]

#: the command did what was asked
EXIT_OK = 0
#: the API refused the request (an illegal state, a bad argument...); its message is printed
EXIT_REFUSED = 1
#: bad command line or configuration, or no token to be found
EXIT_USAGE = 2
#: the daemon does not answer (not running, or not at that address)
EXIT_DOWN = 3
#: the daemon refused the token (401)
EXIT_TOKEN = 4
#: not found (404): no such call, extension or CDR, or the adapter the command needs is off
EXIT_NOT_FOUND = 5

#: seconds one request may take
TIMEOUT = 15.0


class CtlError(Exception):
    """What ends the command: a one-line message and the exit status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


# -- where the daemon is, and its token -------------------------------------------------------


def admin_url(listen: str) -> str:
    """The base URL of an admin listener given as an endpoint string (``tcp:8080:interface=...``).

    The description is parsed by Twisted itself and "listened" on a memory reactor, which records
    the port and interface; an unspecified interface is reached on loopback.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import MemoryReactor

    reactor = MemoryReactor()
    try:
        serverFromString(reactor, listen).listen(Factory())
    except Exception as e:  # Twisted's parsers raise a zoo of types
        raise CtlError(f"cannot tell the admin URL from [admin] listen = {listen!r} ({e}): give --url", EXIT_USAGE)
    listened = reactor.tcpServers or reactor.sslServers  # each (port, factory, ..., interface)
    if not listened:
        raise CtlError(f"[admin] listen = {listen!r} is not a TCP or TLS port: give --url", EXIT_USAGE)
    port, *_, interface = listened[0]
    scheme = "http" if reactor.tcpServers else "https"
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(interface, interface)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def admin_token(config) -> str:
    """``[admin] token``, else the one the daemon keeps in ``<state_dir>/admin-token``."""
    from gateway.admin.token import TOKEN_FILE

    if config.admin.token:
        return config.admin.token.reveal()
    path = pathlib.Path(config.gateway.state_dir) / TOKEN_FILE
    try:
        token = path.read_text("utf-8").strip()
    except FileNotFoundError:
        token = ""
    except OSError as e:
        raise CtlError(f"cannot read the admin token in {path}: {e.strerror} (give --token)", EXIT_USAGE)
    if not token:
        raise CtlError(
            f"no admin token: [admin] token is empty and {path} has none (the daemon writes it at its first"
            " start; run gatewayctl where the daemon runs, or give --config or --token)",
            EXIT_USAGE,
        )
    return token


def _load_config(path: str | None):
    from gateway.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as e:
        raise CtlError(f"configuration error: {e}", EXIT_USAGE)


# -- the API ---------------------------------------------------------------------------------


@attrs.frozen
class AdminClient:
    """Synchronous JSON requests to the admin API (proxies in the environment are not used)."""

    url: str
    token: str = attrs.field(repr=False)
    timeout: float = TIMEOUT

    def call(self, method: str, path: str, body=None, *, accept=(200, 201)):
        """The response's JSON when its status is in ``accept``; :class:`CtlError` otherwise."""
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=None if body is None else json.dumps(body).encode("utf-8"),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except urllib.error.URLError as e:
            raise self._unreachable(e.reason) from None
        except (OSError, http.client.HTTPException) as e:
            raise self._unreachable(e) from None
        payload = self._decode(status, raw)
        if status in accept:
            return payload
        raise self._refusal(status, payload)

    def _unreachable(self, reason) -> CtlError:
        if isinstance(reason, ConnectionRefusedError):
            return CtlError(f"the gateway is not running at {self.url} (connection refused)", EXIT_DOWN)
        return CtlError(f"cannot reach the gateway at {self.url}: {reason}", EXIT_DOWN)

    def _decode(self, status: int, raw: bytes):
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise CtlError(f"{self.url} answered {status} with something that is not JSON: is it the gateway?",
                           EXIT_REFUSED) from None

    def _refusal(self, status: int, payload) -> CtlError:
        message = payload.get("message") if isinstance(payload, dict) else None
        if status == 401:
            return CtlError(f"the gateway at {self.url} refused the admin token (401): give the right one with"
                            " --token, or check [admin] token and <state_dir>/admin-token", EXIT_TOKEN)
        if status == 404:
            return CtlError(f"not found: {message or 'no such path'}", EXIT_NOT_FOUND)
        code = payload.get("error") if isinstance(payload, dict) else None
        return CtlError(f"refused ({status} {code or 'error'}): {message or payload!r}", EXIT_REFUSED)


# -- rendering -------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    """Left-aligned columns under their headers; ``-`` for an empty cell."""
    cells = [[str(h) for h in headers]] + [["-" if v in (None, "") else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _clock(iso: str | None) -> str:
    """``2024-01-31T12:00:01.123Z`` -> ``2024-01-31 12:00:01``."""
    return iso[:19].replace("T", " ") if iso else "-"


def _parties(call: dict) -> str:
    return ", ".join(f"{p['number']} {p['state']}" for p in call["parties"]) or "-"


def render_calls(data: dict) -> str:
    calls = data["calls"]
    if not calls:
        return "no calls"
    headers = ["CALL", "EXT", "DIR", "STATE", "FROM", "TO", "PARTIES", "TIME"]
    rows = [[c["call_id"], c["extension"], c["direction"], c["state"], c["caller"], c["number"], _parties(c),
             _duration(c["duration"])] for c in calls]
    if any("node" in c for c in calls):  # cluster mode: the node holding each call's media
        headers.append("NODE")
        for row, c in zip(rows, calls):
            row.append(c.get("node"))
    return table(headers, rows)


def _load(load: dict) -> str:
    calls = load.get("calls")
    if isinstance(calls, (int, float)) and float(calls).is_integer():
        calls = int(calls)
    others = [f"{k} {v}" for k, v in sorted(load.items()) if k != "calls"]
    return ", ".join([f"{calls} calls" if calls is not None else "-", *others])


def render_cluster(data: dict) -> str:
    if not data.get("cluster"):
        return f"cluster: off (node {data.get('node')} runs alone: no [cluster] table)"
    lines = [f"cluster: node {data['node']} sees {len(data['nodes'])} live node(s); redis {data['redis']}"]
    lines.append(table(
        ["NODE", "STATE", "LOAD", "LEASES", "ADMIN"],
        [[n["node"] + (" *" if n.get("self") else ""), "draining" if n["draining"] else "serving",
          _load(n.get("load", {})), ", ".join(n.get("leases", [])), n.get("meta", {}).get("admin")]
         for n in data["nodes"]],
    ))
    if data["leases"]:
        lines.append("")
        lines.append(table(["LEASE", "HOLDER", "TOKEN", "TTL"],
                           [[lease["name"], lease["holder"], lease["token"], f"{lease['ttl_ms'] / 1000:.1f}s"]
                            for lease in data["leases"]]))
    else:
        lines.append("no lease is held")
    return "\n".join(lines)


def render_drain(data: dict) -> str:
    return (f"node {data['node']} is draining ({data.get('live_calls', 0)} live calls may finish until its"
            " drain timeout); gatewayctl cluster shows it until it leaves")


def render_call(call: dict) -> str:
    fields = [
        ("call", call["call_id"]), ("extension", call["extension"]), ("direction", call["direction"]),
        ("state", call["state"] + (" (muted)" if call["muted"] else "")), ("from", call["caller"]),
        ("to", call["number"]), ("app", call["app"]), ("created", _clock(call["created_at"])),
        ("answered", _clock(call["answered_at"])), ("ended", _clock(call["ended_at"])),
        ("duration", _duration(call["duration"])), ("cause", call["cause"]), ("hung up by", call["hangup_by"]),
        ("dtmf digits", call["dtmf_count"]), ("consult", call.get("consult")),
        ("consult of", call.get("consult_of")),
    ]
    head = "\n".join(f"{name + ':':13}{value}" for name, value in fields if value not in (None, "-"))
    legs = table(
        ["LEG", "ROLE", "DIR", "NUMBER", "DRIVER", "STATE", "CAUSE"],
        [[leg["leg_id"], leg["role"], leg["direction"], leg["number"], leg["driver"],
          leg["state"] + (" (muted)" if leg["muted"] else ""), leg["cause"]] for leg in call["legs"]],
    )
    return f"{head}\n\n{legs}"


def render_dialled(call: dict) -> str:
    return (f"call {call['call_id']}: ringing extension {call['extension']}, then {call['number']}"
            f" (state {call['state']})")


def render_consulting(call: dict) -> str:
    return (f"call {call['call_id']}: consulting {call['number']} for extension {call['extension']}, call"
            f" {call['consult_of']} held (state {call['state']})")


def render_alternated(call: dict) -> str:
    return f"call {call['call_id']}: {call['state']}"


def render_transferred(call: dict) -> str:
    return f"call {call['call_id']} transferred to its consult: {call['state']}, cause {call['cause'] or '-'}"


def render_conferenced(call: dict) -> str:
    return f"call {call['call_id']}: conference of {_parties(call)} (state {call['state']})"


def render_hung_up(call: dict) -> str:
    return f"call {call['call_id']} hung up: {call['state']}, cause {call['cause'] or '-'}"


def render_cdrs(data: dict) -> str:
    cdrs = data["cdrs"]
    if not cdrs:
        return "no CDRs"
    return table(
        ["CALL", "STARTED", "EXT", "DIR", "FROM", "TO", "TIME", "BILLED", "CAUSE", "BY"],
        [[c["call_id"], _clock(c["started_at"]), c["extension"], c["direction"], c["caller"], c["number"],
          _duration(c["duration"]), _duration(c["billable_seconds"]), c["cause"], c["hangup_by"]] for c in cdrs],
    )


def render_sms_sent(data: dict) -> str:
    sms = data["sms"]
    return f"SMS {sms['uid']} to {sms['number']} stored: {sms['status']}; the chat connector sends it"


def render_sms_received(data: dict) -> str:
    sms = data["sms"]
    what = "already had" if data["duplicate"] else "stored"
    return f"SMS {sms['uid']} from {sms['number']} {what}: {sms['status']}; the chat connector delivers it"


def _tree(value, indent: int = 0) -> list[str]:
    """An adapter's status as indented lines; a list of objects becomes a table."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{key}:", *_tree(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return lines
    if value and all(isinstance(item, dict) for item in value):
        headers = list(dict.fromkeys(key for item in value for key in item))
        rows = [[_scalar(item.get(key)) for key in headers] for item in value]
        return [pad + line for line in table([h.upper() for h in headers], rows).splitlines()]
    return [f"{pad}- {_scalar(item)}" for item in value]


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list)):
        return json.dumps(value) if value else "-"
    return "-" if value is None else str(value)


def render_status(data: dict) -> str:
    readiness = data["readiness"]
    head = f"gateway {data['node']} {data['version']}: "
    if readiness["ready"]:
        head += "ready"
    else:
        head += "NOT READY\n" + "\n".join(f"  {name}: {reason}" for name, reason in readiness["not_ready"].items())
    running = data.get("adapters") or {}
    lines = [head]
    if running:
        lines += ["adapters:", *(f"  {name}: {state}" for name, state in running.items())]
    adapters = {k: v for k, v in data.items() if k not in ("readiness", "node", "version", "adapters")}
    return "\n".join([*lines, *_tree(adapters)])


# -- the commands ----------------------------------------------------------------------------


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _status(api: AdminClient, args) -> dict:
    return {"readiness": api.call("GET", "/readyz", accept=(200, 503)), **api.call("GET", "/api/status")}


def _calls(api: AdminClient, args) -> dict:
    query = f"?extension={_quoted(args.extension)}" if args.extension else ""
    return api.call("GET", f"/api/calls{query}")


def _cdrs(api: AdminClient, args) -> dict:
    query = {k: v for k, v in (("since", args.since), ("limit", args.limit)) if v is not None}
    return api.call("GET", "/api/cdrs" + (f"?{urllib.parse.urlencode(query)}" if query else ""))


def _drain(api: AdminClient, args) -> dict:
    try:
        return api.call("POST", f"/api/cluster/nodes/{_quoted(args.node)}/drain", accept=(202,))
    except CtlError as e:
        if e.status == EXIT_NOT_FOUND and "cluster is off" in str(e):
            raise CtlError("not found: the cluster is off: this gateway has no [cluster] table, so there is"
                           " no node to drain (stop it with SIGTERM)", EXIT_NOT_FOUND) from None
        raise


def _sms(path: str, number_field: str):
    """A command posting ``{number_field: NUMBER, "text": TEXT}`` to one of the chat connector's SMS routes."""

    def run(api: AdminClient, args) -> dict:
        try:
            return api.call("POST", path, {number_field: args.number, "text": args.text})
        except CtlError as e:
            if e.status == EXIT_NOT_FOUND:
                raise CtlError("not found: the gateway has no SMS route: the chat connector ([chat]) is off"
                               " (gatewayctl status says why)", EXIT_NOT_FOUND) from None
            raise

    return run


#: command name -> (what it does, ``run(api, args) -> JSON``, ``render(JSON) -> text``)
COMMANDS = {
    "status": ("readiness and each adapter's live status", _status, render_status),
    "calls": ("the live calls", _calls, render_calls),
    "call": ("one call and its legs",
             lambda api, args: api.call("GET", f"/api/calls/{_quoted(args.id)}"), render_call),
    "dial": ("click-to-dial: ring EXTENSION's phone, then NUMBER",
             lambda api, args: api.call("POST", "/api/calls", {"extension": args.extension, "number": args.number}),
             render_dialled),
    "hangup": ("hang up a call",
               lambda api, args: api.call("POST", f"/api/calls/{_quoted(args.id)}/hangup"), render_hung_up),
    "consult": ("hold call ID's parties and dial NUMBER (an extension or a number) as its consult call",
                lambda api, args: api.call("POST", f"/api/calls/{_quoted(args.id)}/consult", {"number": args.number}),
                render_consulting),
    "alternate": ("swap which of a call and its consult is held (ID: either)",
                  lambda api, args: api.call("POST", f"/api/calls/{_quoted(args.id)}/alternate"), render_alternated),
    "transfer-to-consult": ("join the parties of a call and its consult, and drop the agent (ID: either)",
                            lambda api, args: api.call("POST", f"/api/calls/{_quoted(args.id)}/transfer-to-consult"),
                            render_transferred),
    "conference-in-consult": ("join a call, its consulted party and the agent (ID: either)",
                              lambda api, args: api.call("POST", f"/api/calls/{_quoted(args.id)}/conference-in-consult"),
                              render_conferenced),
    "cdrs": ("call detail records, oldest first", _cdrs, render_cdrs),
    "cluster": ("the cluster's nodes, their load, which drain, and who holds each singleton link",
                lambda api, args: api.call("GET", "/api/cluster"), render_cluster),
    "drain": ("drain NODE: no new calls there, its singleton links handed over, its live calls until"
              " [cluster] drain_timeout", _drain, render_drain),
    "sms send": ("an SMS to NUMBER: stored, then sent by the chat connector's SMS transport",
                 _sms("/api/sms/outbound", "to"), render_sms_sent),
    "sms receive": ("an SMS from NUMBER reaches the gateway (the chat connector's inbound route, as a"
                    " phone network's webhook would deliver it)",
                    _sms("/api/sms/inbound", "from"), render_sms_received),
}


def _parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command; SUPPRESS keeps a
    # subcommand's unset option from overwriting one given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="the admin API (default: from [admin] listen)")
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                        help="the daemon's configuration (default: the embedded defaults)")
    common.add_argument("--token", default=argparse.SUPPRESS,
                        help="the admin token (default: [admin] token, else <state_dir>/admin-token)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the API's JSON")

    parser = argparse.ArgumentParser(
        prog="gatewayctl", parents=[common], description="Talk to a running gateway through its admin API.",
        epilog="exit status: 0 done, 1 refused by the gateway, 2 usage or configuration, 3 gateway not"
               " answering, 4 token refused, 5 not found (no such call, extension or CDR, or the adapter"
               " the command needs is off)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name, *arguments, under=commands):
        """The subcommand ``name`` of :data:`COMMANDS` (its last word, for ``sms send``) under ``under``."""
        help_text = COMMANDS[name][0]
        sub = under.add_parser(name.split()[-1], parents=[common], help=help_text, description=help_text)
        for argument, options in arguments:
            sub.add_argument(argument, **options)
        sub.set_defaults(run=name)

    command("status")
    command("calls", ("--extension", {"metavar": "ID", "help": "only this extension's calls"}))
    command("call", ("id", {"help": "the call's id"}))
    command("dial", ("extension", {}), ("number", {}))
    command("hangup", ("id", {"help": "the call's id"}))
    command("consult", ("id", {"help": "the call to hold (the primary)"}),
            ("number", {"help": "an extension id or a phone number"}))
    for name in ("alternate", "transfer-to-consult", "conference-in-consult"):
        command(name, ("id", {"help": "the primary call's id, or its consult's"}))
    command("cdrs", ("--since", {"metavar": "ISO8601", "help": "ended at or after this time"}),
            ("--limit", {"type": int, "help": "at most this many (the API's default: 100)"}))
    command("cluster")
    command("drain", ("node", {"help": "the node's id ([gateway] node; gatewayctl cluster lists them)"}))
    sms = commands.add_parser("sms", help="SMS through the chat connector")
    sms_commands = sms.add_subparsers(dest="sms_command", metavar="COMMAND", required=True)
    for name, number_help in (("send", "the number the SMS goes to"), ("receive", "the number the SMS comes from")):
        command(f"sms {name}", ("number", {"help": number_help}), ("text", {"help": "the SMS's text"}),
                under=sms_commands)
    return parser


def _client(args) -> AdminClient:
    url, token = getattr(args, "url", None), getattr(args, "token", None)
    if url is None or token is None:
        config = _load_config(getattr(args, "config", None))
        url = url or admin_url(config.admin.listen)
        token = token or admin_token(config)
    return AdminClient(url, token)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (the console script exits with it)."""
    args = _parser().parse_args(argv)
    _, run, render = COMMANDS[args.run]
    try:
        data = run(_client(args), args)
    except CtlError as e:
        print(f"gatewayctl: {e}", file=sys.stderr)
        return e.status
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else render(data))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
