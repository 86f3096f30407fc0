"""``python -m gateway.sim <simulator> [options]``: run one peer simulator from the command line."""

import importlib
import sys

#: simulator name -> module whose ``main(argv)`` runs it
SIMULATORS = {
    "optimaccs": "gateway.sim.optimaccs",
    "patriot-client": "gateway.sim.patriot_client",
    "patriot-server": "gateway.sim.patriot_server",
    "his-bridge": "gateway.sim.his",
    "chat-server": "gateway.sim.chat_server",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SIMULATORS:
        names = ", ".join(sorted(SIMULATORS))
        print(f"usage: python -m gateway.sim {{{names}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(SIMULATORS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
