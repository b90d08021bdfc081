"""One hostile case, run in a child process under an address-space limit (``RLIMIT_AS``).

``python hostile_child.py SPEC_JSON`` makes a client of the hostile server,
makes the call the spec names, and prints one JSON line: the error's type
and classes, how long the call took, how much the resident memory grew,
which non-loopback hosts it tried to reach (none may be), and which of the
spec's secrets its traceback shows (none may). A ``MemoryError`` under the
limit is what an unbounded read looks like.
"""

from __future__ import annotations

import ipaddress
import json
import resource
import signal
import socket
import sys
import time
import traceback
from typing import Any

contacted: list[str] = []
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: Any) -> None:
    """Only loopback: a hostile URL must never make the test reach out (169.254.169.254)."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = str(address[0])
        try:
            loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            contacted.append(host)
            raise ConnectionRefusedError(f"the test's guard refused {host}: not loopback")
    _real_connect(self, address)


class BoundExceeded(BaseException):
    """The call outlived the row's time bound (raised by a timer in this process)."""


def _overdue(signum: int, frame: object) -> None:
    raise BoundExceeded("the call outlived its time bound")


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _call(spec: dict[str, Any]) -> None:
    import os

    import arta
    from arta.transport import HttpxTransport, Urllib3Transport

    kind = os.environ.get("ARTA_TEST_TRANSPORT", "").strip().lower()
    transport = {"httpx": HttpxTransport, "urllib3": Urllib3Transport}.get(kind, lambda: None)()
    client = arta.Client(
        spec["endpoint"], home=spec["home"], transport=transport,
        request_timeout=(2.0, spec["read_timeout"]),
        retry_policy=arta.RetryPolicy(first_delay=0.05, max_delay=0.2, jitter=0),
        poll_policy=arta.PollPolicy(first_delay=0.02, interval=0.02, growth=1.5,
                                    max_delay=0.1, jitter=0.01),
    )
    call = spec["call"]
    if call == "resume":
        client.resume("job-1")
    elif call == "result":
        client.resume("job-1").result()
    elif call == "refresh":
        client.auth.refresh(spec["secrets"][0])
    elif call == "token":
        client.auth.token()
    elif call == "submit":
        client.submit("a fox")
    elif call == "wait":
        client.submit("a fox").wait(timeout=spec["asked"])
    elif call == "save":
        generation = client.submit("a fox", n=1).wait(timeout=30)
        generation.result().save(spec["folder"])
    else:
        raise ValueError(f"unknown call {call!r}")


def main() -> None:
    """Run the case in ``sys.argv[1]`` and print its outcome as one JSON line."""
    spec = json.loads(sys.argv[1])
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    import arta  # noqa: F401 - imported before the limit, so the limit is all headroom

    limit = _vm_bytes() + spec["headroom_mb"] * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    rss_before = _rss_mb()
    outcome: dict[str, Any] = {"error": None, "classes": []}
    # The bound is timed here, from the call on: a loaded machine's slow start
    # (imports, 20 children at once) does not count, and a hang ends here too.
    signal.signal(signal.SIGALRM, _overdue)
    signal.setitimer(signal.ITIMER_REAL, spec["bound"] + 1.0)
    started = time.monotonic()
    try:
        _call(spec)
    except BaseException as error:  # noqa: BLE001 - whatever it is, report it
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        outcome = {
            "error": type(error).__name__,
            "classes": [cls.__name__ for cls in type(error).__mro__],
            "message": str(error)[:800],
            "record_id": getattr(error, "record_id", None),
            "leaked": [secret for secret in spec.get("secrets", []) if secret in text],
            "escapes": "\x1b" in text,
        }
    signal.setitimer(signal.ITIMER_REAL, 0)
    outcome["elapsed"] = time.monotonic() - started
    outcome["rss_growth_mb"] = _rss_mb() - rss_before
    outcome["contacted"] = contacted
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
