"""``python -m gateway.sim <simulator> [options]``: run one peer simulator from the command line."""

import importlib
import sys

#: simulator name -> (module whose ``main(argv)`` runs it, what it is: one line for ``--help``)
SIMULATORS = {
    "chat-server": ("gateway.sim.chat_server",
                    "an Expertflow chat server (Socket.IO + REST) for the [chat] SMS connector"),
    "his-bridge": ("gateway.sim.his",
                   "an OpenMethods HIS processor bridge with agent desktops, for the [cti] Bridge Client"),
    "optimaccs": ("gateway.sim.optimaccs",
                  "OptimaCCS: 'call' places inbound calls into [optimaccs], 'api' is the outbound provider API"),
    "patriot-client": ("gateway.sim.patriot_client",
                       "Patriot in client mode: logs in to the Dialler Bridge [patriot.bridge], dials, hangs up"),
    "patriot-server": ("gateway.sim.patriot_server",
                       "Patriot in server mode: the Desktop API a [[patriot.desktop]] link connects to"),
}


def usage() -> str:
    """The top-level help: every simulator with one line saying what it is."""
    width = max(map(len, SIMULATORS))
    lines = [
        "usage: python -m gateway.sim SIMULATOR [options]",
        "",
        "Run one of the gateway's peer simulators on this machine (loopback by default).",
        "",
        "simulators:",
        *(f"  {name:<{width}}  {summary}" for name, (_, summary) in sorted(SIMULATORS.items())),
        "",
        "python -m gateway.sim SIMULATOR --help shows a simulator's options.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if not argv or argv[0] not in SIMULATORS:
        if argv:
            sys.stderr.write(f"python -m gateway.sim: unknown simulator {argv[0]!r}\n")
        sys.stderr.write(usage())
        return 2
    module = importlib.import_module(SIMULATORS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
