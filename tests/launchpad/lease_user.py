"""A stand-in for a run-loop's use of the embedded server, as a real separate process (for the lifecycle tests).

    python -m tests.launchpad.lease_user WORKSPACE PORT

Prints one JSON line ({"how": ..., "server_pid": ...}) once it uses the server, then waits for a line on stdin
and releases its lease, printing "stopped" or "left"."""

from __future__ import annotations

import json
import sys

from autopipec_fw.launchpad.server import EmbeddedServer


def main() -> int:
    lease = EmbeddedServer(sys.argv[1], port=int(sys.argv[2])).use(command="test run-loop")
    print(json.dumps({"how": lease.how, "server_pid": lease.info.pid, "port": lease.info.port}), flush=True)
    sys.stdin.readline()
    print("stopped" if lease.release() else "left", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
