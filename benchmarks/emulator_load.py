"""How many requests the emulator serves per second, and how fast, when many clients poll it.

Benchmarks of the client drive 1,000-2,000 jobs in flight against an
emulator in its own process, polled every 1.5-3 s each (about 1,000 status
requests a second), after 1,000 submits sent as fast as a client can. This
measures whether the emulator keeps up, so that those benchmarks measure
the client and not the emulator.

The emulator runs as a user runs it, ``arta emulator --port 0`` in a
subprocess. Client load comes from ``--procs`` processes (so the client's
own GIL is not the limit), each with threads that own one
``requests.Session`` (keep-alive) each:

- ``submit``: 1,000 submits from 32 connections, as fast as they go;
- ``poll N``: N connections in a closed loop, each asking the status of a
  random existing job again as soon as it has its answer;
- ``raw sockets N``: as ``poll N``, but each client writes the request
  bytes to a bare socket and reads the answer by its Content-Length: a
  client that costs little, to find where the server itself stops;
- ``paced N``: N connections each polling every 1.5-3 s, the benchmarks'
  real pattern (N = 1,000 is about 450 requests a second).

"server CPU µs/req" is the emulator process's CPU time (user + system)
over the requests it answered: the number that does not depend on how busy
the machine is. One Python process serves on one core at a time (the GIL),
so 1 s / that is about the most it can answer per second.

Each row gives requests per second and the latency p50/p99 seen by the
client. With ``--compare DIR`` the same rows are measured, in the same run,
against the emulator of another source tree (e.g. an older checkout made
with ``git worktree add /tmp/before <commit>``), and the ratios printed.

    python benchmarks/emulator_load.py [--seconds 5] [--procs 2] [--compare DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
SIGNUP = "/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser?key=k"
TEXT2IMAGE = "/api/v1/text2image"


@dataclass
class Row:
    """One case's outcome."""

    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    #: CPU seconds the emulator's process spent meanwhile.
    server_cpu: float = 0.0

    @property
    def cpu_per_request(self) -> float:
        """Server CPU seconds per request: what bounds its rate (one core, the GIL)."""
        return self.server_cpu / self.requests if self.requests else float("nan")

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_emulator(source: Path) -> tuple[subprocess.Popen[str], str]:
    """``arta emulator --port 0`` from the tree ``source``; returns it and its URL."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    process = subprocess.Popen(
        [sys.executable, "-m", "arta.cli", "emulator", "--port", "0",
         "--queue-seconds", "0-5", "--progress-seconds", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=source)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(pid: int, case: Callable[[], Row]) -> Row:
    """Run ``case``, recording the emulator's CPU time meanwhile."""
    before = cpu_seconds(pid)
    row = case()
    row.server_cpu = cpu_seconds(pid) - before
    return row


def _session(url: str, auth: dict[str, str]) -> requests.Session:
    session = requests.Session()
    session.headers.update(auth)
    return session


def _thread_loop(
    url: str, auth: dict[str, str], ids: list[str], until: float, pace: tuple[float, float],
    out: list[float], errors: list[int],
) -> None:
    """Poll random jobs until ``until``; a pause drawn from ``pace`` between polls."""
    session, rng = _session(url, auth), random.Random()
    if pace[1]:
        time.sleep(rng.uniform(0, pace[1]))  # spread the first polls
    while time.monotonic() < until:
        record_id = ids[rng.randrange(len(ids))]
        began = time.perf_counter()
        try:
            ok = session.get(f"{url}{TEXT2IMAGE}/{record_id}/status", timeout=30).ok
        except requests.RequestException:
            ok = False
        out.append(time.perf_counter() - began)
        if not ok:
            errors.append(1)
        if pace[1]:
            time.sleep(rng.uniform(*pace))
    session.close()


def _raw_thread_loop(
    url: str, auth: dict[str, str], ids: list[str], until: float, pace: tuple[float, float],
    out: list[float], errors: list[int],
) -> None:
    """As :func:`_thread_loop`, over a bare keep-alive socket: the client costs little."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = socket.create_connection((host, int(port)))
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = connection.makefile("rb")
    token = auth["Authorization"]
    requests_bytes = [(f"GET {TEXT2IMAGE}/{r}/status HTTP/1.1\r\nHost: {host}\r\n"
                       f"Authorization: {token}\r\n\r\n").encode() for r in ids[:200]]
    n = 0
    while time.monotonic() < until:
        began = time.perf_counter()
        connection.sendall(requests_bytes[n % len(requests_bytes)])
        n += 1
        length = 0
        status = reader.readline()
        while (line := reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        reader.read(length)
        out.append(time.perf_counter() - began)
        if b" 200 " not in status:
            errors.append(1)
    connection.close()


def _process(
    url: str, auth: dict[str, str], ids: list[str], threads: int, seconds: float,
    pace: tuple[float, float], queue: multiprocessing.Queue[tuple[list[float], int]],
    raw: bool = False,
) -> None:
    """One client process: ``threads`` threads polling for ``seconds``."""
    until = time.monotonic() + seconds
    loop = _raw_thread_loop if raw else _thread_loop
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[int] = []
    workers = [threading.Thread(target=loop,
                                args=(url, auth, ids, until, pace, latencies[i], errors))
               for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    queue.put(([x for part in latencies for x in part], len(errors)))


def poll_case(
    name: str, url: str, auth: dict[str, str], ids: list[str], connections: int,
    procs: int, seconds: float, pace: tuple[float, float] = (0.0, 0.0), raw: bool = False,
) -> Row:
    """``connections`` keep-alive connections split over ``procs`` processes, for ``seconds``."""
    procs = min(procs, connections)
    queue: multiprocessing.Queue[tuple[list[float], int]] = multiprocessing.Queue()
    shares = [connections // procs + (i < connections % procs) for i in range(procs)]
    children = [multiprocessing.Process(target=_process,
                                        args=(url, auth, ids, share, seconds, pace, queue, raw))
                for share in shares]
    for child in children:
        child.start()
    results = [queue.get() for _ in children]
    for child in children:
        child.join()
    latencies = [x for part, _ in results for x in part]
    errors = sum(e for _, e in results)
    # Every request was sent within its process's window of ``seconds``.
    return Row(name, len(latencies), seconds, latencies, errors)


def submit_case(url: str, auth: dict[str, str], jobs: int, threads: int = 32) -> tuple[Row, list[str]]:
    """``jobs`` submits from ``threads`` connections, as fast as they go."""
    ids: list[str] = []
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    left = iter(range(jobs))

    def run() -> None:
        session = _session(url, auth)
        while True:
            with lock:
                n = next(left, None)
            if n is None:
                break
            began = time.perf_counter()
            answer = session.post(f"{url}{TEXT2IMAGE}", data={"prompt": f"job {n}"}, timeout=30)
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                if answer.ok:
                    ids.append(answer.json()["record_id"])
                else:
                    errors.append(1)

    began = time.monotonic()
    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Row(f"submit x{jobs} ({threads} conn)", jobs, time.monotonic() - began, latencies,
               len(errors)), ids


def run_all(source: Path, args: argparse.Namespace, log: Callable[[str], None]) -> list[Row]:
    """Every case against the emulator of ``source``."""
    process, url = start_emulator(source)
    try:
        auth = {"Authorization": requests.post(f"{url}{SIGNUP}", json={}, timeout=10)
                .json()["idToken"]}
        ids: list[str] = []

        def submits() -> Row:
            row, new = submit_case(url, auth, args.jobs)
            ids.extend(new)
            return row

        submitted = _measured(process.pid, submits)
        rows = [submitted]
        log(f"  {submitted.name}: {submitted.rate:.0f}/s")
        for connections in args.connections:
            row = _measured(process.pid, lambda c=connections: poll_case(
                f"poll, {c} conn", url, auth, ids, c, args.procs, args.seconds))
            rows.append(row)
            log(f"  {row.name}: {row.rate:.0f}/s, {row.cpu_per_request * 1e6:.0f} µs/req")
        for connections in args.raw:
            row = _measured(process.pid, lambda c=connections: poll_case(
                f"raw sockets, {c} conn", url, auth, ids, c, args.procs, args.seconds, raw=True))
            rows.append(row)
            log(f"  {row.name}: {row.rate:.0f}/s, {row.cpu_per_request * 1e6:.0f} µs/req")
        for connections in args.paced:
            row = _measured(process.pid, lambda c=connections: poll_case(
                f"paced 1.5-3 s, {c} conn", url, auth, ids, c, args.procs, args.seconds,
                (1.5, 3.0)))
            rows.append(row)
            log(f"  {row.name}: {row.rate:.0f}/s, {row.cpu_per_request * 1e6:.0f} µs/req")
        return rows
    finally:
        process.terminate()
        process.wait(timeout=10)


def table(rows: list[Row], baseline: list[Row] | None) -> str:
    """The rows, with the rate's ratio to the baseline's when there is one."""
    head = ("| case | req/s | p50 ms | p99 ms | errors | server CPU µs/req |"
            + (" vs before |" if baseline else ""))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for i, row in enumerate(rows):
        line = (f"| {row.name} | {row.rate:.0f} | {row.quantile(0.5) * 1e3:.1f} "
                f"| {row.quantile(0.99) * 1e3:.1f} | {row.errors} "
                f"| {row.cpu_per_request * 1e6:.0f} |")
        if baseline:
            before = baseline[i]
            line += (f" {row.rate / before.rate:.2f}x req/s, "
                     f"{row.cpu_per_request / before.cpu_per_request:.2f}x CPU/req "
                     f"({before.rate:.0f}/s, p99 {before.quantile(0.99) * 1e3:.1f} ms, "
                     f"{before.cpu_per_request * 1e6:.0f} µs/req) |")
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run every case (and the comparison), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each poll case")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs submitted first")
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 8, 32, 128])
    parser.add_argument("--raw", type=int, nargs="*", default=[32],
                        help="connections of the bare-socket client (finds the server's limit)")
    parser.add_argument("--paced", type=int, nargs="*", default=[1000])
    parser.add_argument("--compare", type=Path, default=None,
                        help="source tree of an emulator to compare against, in the same run")
    args = parser.parse_args()
    log = lambda text: print(text, file=sys.stderr, flush=True)
    baseline = None
    if args.compare:
        log(f"before: {args.compare}")
        baseline = run_all(args.compare.resolve(), args, log)
    log(f"now: {ROOT}")
    rows = run_all(ROOT, args, log)
    print(f"emulator load, {os.cpu_count()} cores, {args.procs} client processes, "
          f"{args.seconds:g} s per poll case, load average {os.getloadavg()[0]:.1f}")
    print(table(rows, baseline))


if __name__ == "__main__":
    main()
