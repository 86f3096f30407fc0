"""``python -m bench <name> [options]``: run one benchmark."""

import importlib
import sys

BENCHMARKS = {
    "cluster": "bench.cluster_bench",
    "media": "bench.media_bench",
    "optimaccs-echo": "bench.optimaccs_echo",
    "sip-echo": "bench.sip_echo",
    "soak": "bench.soak",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
