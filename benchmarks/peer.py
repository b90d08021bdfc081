"""arta beside the old provider (gpt4free's ``ARTA``), and beside bare HTTP calls, in one run.

What runs, each client in a fresh process of its own (so that its CPU
time, peak RSS and threads are its alone) with an empty ``ARTA_HOME``,
against ``arta emulator`` in another process (its CPU is not counted):

- ``old``: the old provider, ``g4f`` pinned to ``G4F_VERSION`` in a venv of
  its own (``benchmarks/.peer-venv/``, made on first use with pip from the
  package index: ``g4f==0.5.2.0`` and its declared dependencies, no
  extras). In its subprocess the class's URL attributes are pointed at the
  emulator (nothing in site-packages is edited), its auth file goes to the
  temp home (``g4f.cookies.set_cookies_dir``), one sign-up is made with the
  provider's own ``read_and_refresh_token()``, then N concurrent
  ``create_async_generator`` calls run in one asyncio loop, URLs only.
  (Without that one sign-up first, the N calls would each find no auth file
  and sign up N times: arta's rows and the bare rows sign up once too.)
- ``aio``: N concurrent ``arta.aio.generate`` (``asyncio.gather``), URLs only.
- ``map``: ``arta.Client().map(prompts, concurrency=N)``, the default transport.
- ``map-requests``, ``map-httpx``, ``map-urllib3``: ``Client(transport=T()).map``
  with ``RequestsTransport``, ``HttpxTransport``, ``Urllib3Transport`` (a row
  whose transport ``arta.transport`` lacks is skipped).
- ``bare-requests``, ``bare-httpx``, ``bare-urllib3``: the same HTTP calls
  (one sign-up, N multipart submits, status polls) made with the library
  alone, no arta code: one scheduler loop (a heap of due polls) and as many
  I/O threads as arta's poll loop has. They poll each job at a fixed
  interval, chosen so that they make as many status requests per job as
  the arta row on the same transport made in the same run (``map`` for
  requests, ``map-urllib3`` or else ``map`` for urllib3): the interval P
  for which the mean of ``ceil(duration / P)`` over that row's jobs equals
  its requests per job. Their own requests per job are counted and shown.

Loads: (a) N=500 jobs at once, in progress 4-8 s, no queue, no capacity
limit; (b) N=300 jobs into ``--capacity 64`` with the emulator's
service-like timing model (and its default 1 s queue delay); (c) 2,000
``arta.aio.generate`` in flight with a 10 ms ticker in the same event loop
(how late it wakes: p50, p99), beside the old provider under the same load
(``aio-lag``, ``old-lag``), in progress 4-8 s as (a).

Columns: CPU ms per job is user+sys of the client process from after its
imports to the end of its work (the sign-up included), divided by the jobs;
status requests per job and sign-ups are counted by the emulator
(``/emulator/stats``, reset before each row); threads is the peak of the client's
``/proc/PID/status`` ``Threads:``, sampled by this process every 50 ms;
RSS is the client's ``ru_maxrss``; lateness is, per job, the wall-clock time
at which the client had the job's URLs minus the ``finished_at`` the
emulator planned for it (``GET /emulator/jobs/{id}``), both on this
machine's clock. Ratios are CPU per job against the old provider's row and
against the bare row on the same transport, in the same load of this run.

    python benchmarks/peer.py                   # everything (about 12 minutes on 2 cores)
    python benchmarks/peer.py --quick           # a smoke run with small N (about 3 minutes)
    python benchmarks/peer.py --only old,map-httpx  # some rows, in each load (a ratio needs its row)
    python benchmarks/peer.py --loads a,c --jobs 200 --format md

No client and no emulator here contacts anything but 127.0.0.1: every client
process refuses any other address before it connects (``_loopback_only``).
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
G4F_VERSION = "0.5.2.0"
PEER_VENV = Path(__file__).resolve().parent / ".peer-venv"
TICK = 0.010
SAMPLE = 0.05
API_KEY = "AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ"  # the public key every known client sends
SIGNUP = "/www.googleapis.com/identitytoolkit/v3/relyingparty/signupNewUser?key=" + API_KEY
REFRESH = "/securetoken.googleapis.com/v1/token?key=" + API_KEY
SUBMIT = "/api/v1/text2image"
STATUS = SUBMIT + "/{record_id}/status"
FORM = {"negative_prompt": "blurry, deformed hands, ugly", "style": "Flux", "images_num": "1",
        "cfg_scale": "7", "steps": "30", "aspect_ratio": "1:1"}  # arta's and the seed's defaults

ARTA_ROWS = ("aio", "map", "map-requests", "map-httpx", "map-urllib3")
BARE_ROWS = ("bare-requests", "bare-httpx", "bare-urllib3")
LOAD_ROWS = ("old", *ARTA_ROWS, *BARE_ROWS)
LAG_ROWS = ("aio-lag", "old-lag")
#: The bare row each arta row is compared with (its transport's library).
BARE_OF = {"aio": "bare-requests", "map": "bare-requests", "map-requests": "bare-requests",
           "map-httpx": "bare-httpx", "map-urllib3": "bare-urllib3"}
#: The arta rows whose status requests per job a bare row copies, first present wins.
MATCH_OF = {"bare-requests": ("map", "map-requests"), "bare-httpx": ("map-httpx",),
            "bare-urllib3": ("map-urllib3", "map")}
TRANSPORT_OF = {"map-requests": "RequestsTransport", "map-httpx": "HttpxTransport",
                "map-urllib3": "Urllib3Transport"}


# -- the client processes -------------------------------------------------------------


def _loopback_only() -> None:
    """Make this process refuse, before connecting, any address that is not loopback."""
    import socket

    def allowed(host: object) -> bool:
        return host is None or (isinstance(host, str) and (
            host.startswith("127.") or host in ("localhost", "::1")))

    real_getaddrinfo = socket.getaddrinfo
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not allowed(host.decode() if isinstance(host, bytes) else host):
            raise PermissionError(f"benchmark: refused to resolve {host!r} (loopback only)")
        return real_getaddrinfo(host, *args, **kwargs)

    def check(address: Any) -> None:
        if isinstance(address, tuple) and not allowed(address[0]):
            raise PermissionError(f"benchmark: refused to connect to {address!r} (loopback only)")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    setattr(socket.socket, "connect", connect)  # noqa: B010 - mypy refuses the assignment
    setattr(socket.socket, "connect_ex", connect_ex)  # noqa: B010


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Work:
    """What a client process reports: when it had each job, what failed, its lags."""

    noticed: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def _record_id(url: str) -> str:
    """The record id in an emulator image URL: ``{base}/images/{record_id}/{i}.png``."""
    return url.rstrip("/").split("/")[-2]


async def _gather_with_ticker(coroutines: Sequence[Any], ticker: bool) -> tuple[list[Any],
                                                                                list[float]]:
    """Await ``coroutines`` together; with ``ticker``, a 10 ms ticker runs in the same loop."""
    gathered = asyncio.gather(*coroutines, return_exceptions=True)
    lags: list[float] = []
    while ticker and not gathered.done():
        tick = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(max(0.0, time.perf_counter() - tick - TICK))
    return await gathered, lags


def run_old(url: str, jobs: int, home: str, ticker: bool) -> Work:
    """The old provider, N concurrent calls in one loop, redirected to the emulator."""
    from importlib.metadata import version

    import aiohttp  # type: ignore[import-not-found]  # the peer venv's, not this one's
    from g4f.cookies import set_cookies_dir  # type: ignore[import-not-found]
    from g4f.Provider.ARTA import ARTA  # type: ignore[import-not-found]
    from g4f.providers.response import ImageResponse  # type: ignore[import-not-found]

    ARTA.auth_url = url + SIGNUP
    ARTA.token_refresh_url = url + REFRESH
    ARTA.image_generation_url = url + SUBMIT
    ARTA.status_check_url = url + STATUS
    set_cookies_dir(home)
    work = Work(versions={"g4f": version("g4f"),
                          "aiohttp": aiohttp.__version__})

    async def one(index: int) -> None:
        prompt = f"peer fox {index}"
        async for item in ARTA.create_async_generator(
                model="Flux", messages=[{"role": "user", "content": prompt}]):
            if isinstance(item, ImageResponse):
                urls = item.urls if isinstance(item.urls, list) else [item.urls]
                work.noticed[_record_id(urls[0])] = time.time()

    async def main() -> None:
        await ARTA.read_and_refresh_token()  # the one sign-up (see the module's docstring)
        results, work.lags = await _gather_with_ticker([one(i) for i in range(jobs)], ticker)
        work.errors = [repr(r) for r in results if isinstance(r, BaseException)]

    asyncio.run(main())
    return work


def run_aio(url: str, jobs: int, home: str, ticker: bool) -> Work:
    """N concurrent ``arta.aio.generate`` on the default client (``ARTA_ENDPOINT``, ``ARTA_HOME``)."""
    import arta.aio

    work = Work()

    async def one(index: int) -> None:
        result = await arta.aio.generate(f"peer fox {index}")
        assert result.images[0].url
        work.noticed[result.record_id] = time.time()

    results, work.lags = asyncio.run(_gather_with_ticker([one(i) for i in range(jobs)], ticker))
    work.errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return work


def run_map(url: str, jobs: int, home: str, transport: str | None) -> Work:
    """``Client().map`` (``transport`` None) or ``Client(transport=T()).map``."""
    import arta
    import arta.transport

    work = Work()
    made = getattr(arta.transport, transport)() if transport else None
    try:
        with (arta.Client(transport=made) if made else arta.Client()) as client:
            for outcome in client.map([f"peer fox {i}" for i in range(jobs)], concurrency=jobs):
                if outcome.ok and outcome.result is not None:
                    work.noticed[outcome.result.record_id] = time.time()
                else:
                    work.errors.append(repr(outcome.error))
    finally:
        if made is not None:
            made.close()
    return work


class BareHTTP:
    """One library's calls: a JSON POST, a multipart POST, a GET; each answers the parsed JSON."""

    def __init__(self, library: str, connections: int) -> None:
        self.library = library
        if library == "requests":
            import requests
            import requests.adapters

            session = requests.Session()
            session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=connections))
            self._client: Any = session
        elif library == "httpx":
            import httpx

            self._client = httpx.Client(timeout=30, limits=httpx.Limits(
                max_connections=connections, max_keepalive_connections=connections))
        else:
            import urllib3

            self._client = urllib3.PoolManager(maxsize=connections, timeout=30)

    def post_json(self, url: str, body: dict[str, str]) -> Any:
        if self.library == "urllib3":
            return self._client.request("POST", url, json=body).json()
        if self.library == "requests":
            return self._client.post(url, json=body, timeout=30).json()
        return self._client.post(url, json=body).json()

    def post_multipart(self, url: str, form: dict[str, str], headers: dict[str, str]) -> Any:
        if self.library == "urllib3":
            return self._client.request("POST", url, fields=form, headers=headers,
                                        encode_multipart=True).json()
        files = {name: (None, value) for name, value in form.items()}
        if self.library == "requests":
            return self._client.post(url, files=files, headers=headers, timeout=30).json()
        return self._client.post(url, files=files, headers=headers).json()

    def get_json(self, url: str, headers: dict[str, str]) -> Any:
        if self.library == "urllib3":
            return self._client.request("GET", url, headers=headers).json()
        if self.library == "requests":
            return self._client.get(url, headers=headers, timeout=30).json()
        return self._client.get(url, headers=headers).json()

    def close(self) -> None:
        if self.library == "urllib3":
            self._client.clear()
        else:
            self._client.close()


def run_bare(url: str, jobs: int, library: str, interval: float, threads: int) -> Work:
    """Sign up, submit N jobs, poll each every ``interval`` s until DONE: a heap and a pool."""
    import random

    http = BareHTTP(library, threads)
    work = Work()
    token = http.post_json(url + SIGNUP, {"clientType": "CLIENT_TYPE_ANDROID"})["idToken"]
    headers = {"Authorization": token, "Accept": "application/json"}
    due: list[tuple[float, str]] = []
    changed = threading.Condition()
    left = [jobs]

    def finish(error: str | None = None) -> None:
        with changed:
            if error is not None:
                work.errors.append(error)
            left[0] -= 1
            changed.notify()

    def again(record_id: str) -> None:
        with changed:
            heapq.heappush(due, (time.monotonic() + interval, record_id))
            changed.notify()

    def submit(index: int) -> None:
        try:
            form = {"prompt": f"peer fox {index}", **FORM,
                    "seed": str(random.randint(9999, 99999999))}
            again(http.post_multipart(url + SUBMIT, form, headers)["record_id"])
        except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
            finish(repr(error))

    def poll(record_id: str) -> None:
        try:
            state = http.get_json(url + STATUS.format(record_id=record_id), headers)
        except Exception as error:  # noqa: BLE001
            finish(repr(error))
            return
        if state["status"] == "DONE":
            assert state["response"][0]["url"]
            work.noticed[record_id] = time.time()
            finish()
        elif state["status"] in ("IN_QUEUE", "IN_PROGRESS"):
            again(record_id)
        else:
            finish(f"job {record_id} ended {state['status']}")

    with ThreadPoolExecutor(threads) as pool:
        for index in range(jobs):
            pool.submit(submit, index)
        with changed:
            while left[0]:
                now = time.monotonic()
                while due and due[0][0] <= now:
                    pool.submit(poll, heapq.heappop(due)[1])
                changed.wait(due[0][0] - now if due else None)
    http.close()
    return work


def child(args: argparse.Namespace) -> None:
    """A client process: run one row, write its JSON report to ``--report``."""
    _loopback_only()
    kind, url, jobs, home = args.child, args.url, args.jobs, args.home

    def work() -> Work:
        if kind == "old":
            return run_old(url, jobs, home, args.ticker)
        if kind == "aio":
            return run_aio(url, jobs, home, args.ticker)
        if kind in BARE_ROWS:
            return run_bare(url, jobs, kind.split("-", 1)[1], args.interval, args.io_threads)
        return run_map(url, jobs, home, TRANSPORT_OF.get(kind))

    # Import the libraries before the clock starts: an import is no job's work.
    if kind == "old":
        import g4f.Provider.ARTA  # type: ignore[import-not-found]  # noqa: F401
    elif kind.startswith("bare-"):
        __import__(kind.split("-", 1)[1])
    else:
        import arta.aio
        import arta.transport  # noqa: F401
    started, cpu = time.perf_counter(), _cpu()
    done = work()
    cpu, wall = _cpu() - cpu, time.perf_counter() - started
    Path(args.report).write_text(json.dumps({
        "cpu": cpu, "wall": wall, "noticed": done.noticed, "errors": done.errors[:20],
        "error_count": len(done.errors), "lags": done.lags, "versions": done.versions,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# -- the old provider's venv --------------------------------------------------------------


def peer_python(venv: Path) -> Path:
    """The venv's python, with ``g4f==G4F_VERSION`` (and its declared dependencies) in it."""
    python = venv / "bin" / "python"
    stamp = venv / "g4f-version.txt"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == G4F_VERSION:
        return python
    print(f"(installing g4f=={G4F_VERSION} into {venv}: once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"g4f=={G4F_VERSION}"], check=True)
    subprocess.run([str(python), "-c", "import g4f.Provider.ARTA"], check=True)
    stamp.write_text(G4F_VERSION + "\n")
    return python


# -- the emulator and the measurement --------------------------------------------------------


class EmulatorProcess:
    """``arta emulator --port 0 FLAGS`` in its own process, and its admin calls."""

    def __init__(self, flags: Sequence[str]) -> None:
        self.flags = tuple(flags)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "arta", "emulator", "--port", "0", "-q", *self.flags],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"the emulator did not start (it printed {self.url!r})")

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.url + path, method=method,
                                         data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def reset(self) -> None:
        self._call("POST", "/emulator/reset")

    def stats(self) -> dict[str, float]:
        return dict(self._call("GET", "/emulator/stats"))

    def timeline(self, record_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/emulator/jobs/{record_id}"))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def emulator(flags: Sequence[str]) -> Iterator[EmulatorProcess]:
    server = EmulatorProcess(flags)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Row:
    """One client's figures in one load."""

    name: str
    jobs: int
    ok: int = 0
    errors: int = 0
    wall: float = 0.0
    cpu_ms: float = 0.0
    polls: float = 0.0
    signups: int = 0
    threads: int = 0
    rss_mb: float = 0.0
    late_p50: float = math.nan
    late_p95: float = math.nan
    lag_p50: float = math.nan
    lag_p99: float = math.nan
    durations: list[float] = field(default_factory=list)
    note: str = ""
    versions: dict[str, str] = field(default_factory=dict)


def _proc_threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(values: Sequence[float], percent: float) -> float:
    """The nearest-rank ``percent`` percentile of ``values`` (nan when empty)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(percent / 100 * len(ordered)) - 1))]


def measure(name: str, server: EmulatorProcess, jobs: int, python: Path, *,
            ticker: bool = False, interval: float = 0.0, io_threads: int = 16,
            note: str = "") -> Row:
    """Run row ``name`` in a fresh process on an empty ``ARTA_HOME``; collect its figures."""
    server.reset()
    with tempfile.TemporaryDirectory(prefix="arta-peer-") as folder:
        home, report_path = Path(folder) / "home", Path(folder) / "report.json"
        home.mkdir()
        kind = name.replace("-lag", "")
        command = [str(python), str(Path(__file__).resolve()), "--child", kind, "--url",
                   server.url, "--jobs", str(jobs), "--home", str(home), "--report",
                   str(report_path), "--interval", str(interval), "--io-threads",
                   str(io_threads)] + (["--ticker"] if ticker else [])
        env = {**os.environ, "ARTA_ENDPOINT": server.url, "ARTA_HOME": str(home),
               "PYTHONPATH": str(ROOT)}
        env.pop("ARTA_POLL", None)  # each row on arta's default poll policy
        if kind == "old":
            env.pop("PYTHONPATH")  # the old provider's process needs no arta, and gets none
        # Files, not pipes: a pipe nobody reads until the end could fill and stall the client.
        with open(Path(folder) / "stderr.txt", "w+", encoding="utf-8") as err:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                       cwd=folder)
            threads = 0
            while process.poll() is None:
                threads = max(threads, _proc_threads(process.pid))
                time.sleep(SAMPLE)
            err.seek(0)
            errors = err.read()
        report = json.loads(report_path.read_text()) if report_path.exists() else None
    row = Row(name, jobs, threads=threads, note=note)
    if process.returncode != 0 or report is None:
        row.note = f"failed (exit {process.returncode})"
        print(f"  {name}: {row.note}: {errors.strip()[-500:]}", file=sys.stderr)
        return row
    stats = server.stats()
    lateness = []
    for record_id, noticed in report["noticed"].items():
        timeline = server.timeline(record_id)
        lateness.append(noticed - timeline["finished_at"])
        row.durations.append(timeline["finished_at"] - timeline["submitted_at"])
    row.ok, row.errors = len(report["noticed"]), report["error_count"]
    row.wall, row.cpu_ms = report["wall"], 1000 * report["cpu"] / jobs
    row.polls = stats["polls"] / max(1, stats["submits"])
    row.signups = int(stats["signups"])
    row.rss_mb, row.versions = report["maxrss_mb"], report["versions"]
    row.late_p50, row.late_p95 = percentile(lateness, 50), percentile(lateness, 95)
    if report["lags"]:
        row.lag_p50 = 1000 * percentile(report["lags"], 50)
        row.lag_p99 = 1000 * percentile(report["lags"], 99)
    if report["errors"]:
        print(f"  {name}: {row.errors} errors, e.g. {report['errors'][0][:300]}", file=sys.stderr)
    print(f"  {name}: {row.ok}/{jobs} ok, {row.wall:.1f} s, {row.cpu_ms:.2f} CPU ms/job, "
          f"{row.polls:.2f} req/job", file=sys.stderr)
    return row


def matching_interval(durations: Sequence[float], polls: float) -> float:
    """The fixed poll interval P at which ``mean(ceil(d / P))`` over ``durations`` is ``polls``."""
    def made(p: float) -> float:
        return statistics.fmean(max(1, math.ceil(d / p)) for d in durations)

    low, high = 0.01, 2 * max(durations) + 1
    for _ in range(60):  # made() falls as P grows: bisect
        middle = (low + high) / 2
        low, high = (middle, high) if made(middle) > polls else (low, middle)
    return high


# -- the tables -----------------------------------------------------------------------------


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], style: str) -> str:
    """A table in reStructuredText (simple table) or Markdown."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    if style == "md":
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
        rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2)
                              for i, w in enumerate(widths)) + "|"
        return "\n".join([line(headers), rule, *(line(r) for r in rows)])
    rule = "  ".join("=" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([rule, "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
                      rule, *body, rule])


def load_table(rows: dict[str, Row], style: str) -> str:
    old = rows.get("old")
    headers = ["client", "ok", "wall s", "CPU ms/job", "x old", "x bare", "status req/job",
               "sign-ups", "threads", "RSS MB", "late p50 s", "late p95 s"]
    lines = []
    for name, row in rows.items():
        bare = rows.get(BARE_OF.get(name, ""))
        x_old = row.cpu_ms / old.cpu_ms if old and old.cpu_ms and row.ok else math.nan
        x_bare = row.cpu_ms / bare.cpu_ms if bare and bare.cpu_ms and row.ok else math.nan
        lines.append([name + (f" ({row.note})" if row.note else ""), f"{row.ok}/{row.jobs}",
                      _fmt(row.wall, 1), _fmt(row.cpu_ms), _fmt(x_old), _fmt(x_bare),
                      _fmt(row.polls), str(row.signups), str(row.threads), _fmt(row.rss_mb, 0),
                      _fmt(row.late_p50), _fmt(row.late_p95)])
    return render(headers, lines, style)


def lag_table(rows: dict[str, Row], style: str) -> str:
    headers = ["client", "ok", "wall s", "CPU ms/job", "threads", "RSS MB", "lag p50 ms",
               "lag p99 ms", "late p50 s", "late p95 s"]
    return render(headers, [[n + (f" ({r.note})" if r.note else ""), f"{r.ok}/{r.jobs}",
                             _fmt(r.wall, 1), _fmt(r.cpu_ms), str(r.threads), _fmt(r.rss_mb, 0),
                             _fmt(r.lag_p50, 1), _fmt(r.lag_p99, 1), _fmt(r.late_p50),
                             _fmt(r.late_p95)] for n, r in rows.items()], style)


def goals(loads: dict[str, dict[str, Row]], lag: dict[str, Row], lag_jobs: int) -> list[str]:
    """Each goal, met or not met, with the figures that decide it."""
    def ratios(names: Sequence[str], against: Callable[[str], str | None]) -> list[str]:
        found = []
        for load, rows in loads.items():
            for name in names:
                other = against(name)
                if name in rows and other in rows and rows[name].ok and rows[other].cpu_ms:
                    found.append(f"{load}/{name} {rows[name].cpu_ms / rows[other].cpu_ms:.2f}x")
        return found

    def verdict(found: list[str], limit: float) -> str:
        if not found:
            return "not measured"
        met = all(float(f.rsplit(" ", 1)[1].rstrip("x")) <= limit for f in found)
        return ("met" if met else "NOT met") + " (" + ", ".join(found) + ")"

    own = verdict(ratios(ARTA_ROWS, BARE_OF.get), 1.25)
    default = verdict(ratios(("map", "aio"), lambda _: "old"), 2.0)
    urllib3 = verdict(ratios(("map-urllib3",), lambda _: "old"), 1.0)
    # The bare row makes the same status requests per job as map-urllib3 with
    # no arta code at all: what any client of that library pays for them.
    floor = ratios(("bare-urllib3",), lambda _: "old")
    out = [f"- arta's own work <= 1.25x bare on the same transport: {own}",
           f"- default transport <= 2x the old provider's CPU per job: {default}",
           f"- Urllib3Transport <= 1.0x the old provider: {urllib3}"
           + (f"; bare urllib3 calls, as many, cost {', '.join(floor)} the old provider"
              if floor else "")]
    row = lag.get("aio-lag")
    if row is None or math.isnan(row.lag_p99):
        out.append(f"- aio loop lag p99 < 20 ms with {lag_jobs:,} jobs: not measured")
    else:
        out.append(f"- aio loop lag p99 < 20 ms with {lag_jobs:,} jobs: "
                   f"{'met' if row.lag_p99 < 20 else 'NOT met'} ({row.lag_p99:.1f} ms)")
    return out


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    key: str
    title: str
    flags: tuple[str, ...]
    jobs: int


def run_load(load: Load, wanted: Sequence[str], peer: Path | None, io_threads: int,
             transports: set[str]) -> dict[str, Row]:
    """Every wanted row of one load against one emulator, reset between rows."""
    rows: dict[str, Row] = {}
    if not set(wanted) & set(LOAD_ROWS):
        return rows
    print(f"\n{load.key}) {load.title}", file=sys.stderr)
    with emulator(load.flags) as server:
        for name in LOAD_ROWS:
            if name not in wanted:
                continue
            if name in TRANSPORT_OF and TRANSPORT_OF[name] not in transports:
                print(f"  {name}: skipped, arta.transport has no {TRANSPORT_OF[name]}",
                      file=sys.stderr)
                continue
            if name == "old":
                if peer is not None:
                    rows[name] = measure(name, server, load.jobs, peer)
                continue
            if name in BARE_ROWS:
                match = next((rows[m] for m in MATCH_OF[name] if m in rows and rows[m].ok), None)
                if match is None:
                    interval, note = 2.0, "polls every 2 s: no arta row to match"
                else:
                    interval = matching_interval(match.durations, match.polls)
                    note = f"every {interval:.2f} s, as {match.name}"
                rows[name] = measure(name, server, load.jobs, Path(sys.executable),
                                     interval=interval, io_threads=io_threads, note=note)
                continue
            rows[name] = measure(name, server, load.jobs, Path(sys.executable))
    return rows


def wanted_rows(only: str | None) -> list[str]:
    """The rows to run: all, or those ``only`` names (comma-separated), in the table's order."""
    if only is None:
        return [*LOAD_ROWS, *LAG_ROWS]
    names = only.split(",")
    for name in names:
        if name not in (*LOAD_ROWS, *LAG_ROWS):
            raise SystemExit(f"--only: no row {name!r}; rows: "
                             f"{', '.join((*LOAD_ROWS, *LAG_ROWS))}")
    return [row for row in (*LOAD_ROWS, *LAG_ROWS) if row in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="jobs of loads (a) and (b) (500 and 300)")
    parser.add_argument("--lag-jobs", type=int, help="jobs in flight in (c) (2,000)")
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke run")
    parser.add_argument("--only", metavar="NAME", help="run only these rows (comma-separated): " + ", ".join(
        (*LOAD_ROWS, *LAG_ROWS)))
    parser.add_argument("--loads", default="a,b,c", help="which loads to run (a,b,c)")
    parser.add_argument("--format", choices=("rst", "md"), default="rst")
    parser.add_argument("--peer-venv", type=Path, default=PEER_VENV)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    parser.add_argument("--io-threads", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--ticker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    sys.path.insert(0, str(ROOT))  # run from a clone, installed or not
    import arta
    import arta.transport

    jobs_a = args.jobs or (40 if args.quick else 500)
    jobs_b = args.jobs or (30 if args.quick else 300)
    lag_jobs = args.lag_jobs or (200 if args.quick else 2000)
    wanted = wanted_rows(args.only)
    loads = [load for load in (
        Load("a", f"{jobs_a} jobs at once, in progress 4-8 s, no capacity limit",
             ("--queue-seconds", "0", "--progress-seconds", "4-8"), jobs_a),
        Load("b", f"{jobs_b} jobs into --capacity 64, the emulator's service-like timing model",
             ("--capacity", "64"), jobs_b)) if load.key in args.loads.split(",")]
    needs_peer = "old" in wanted or ("old-lag" in wanted and "c" in args.loads)
    peer = peer_python(args.peer_venv) if needs_peer else None
    transports = {name for name in TRANSPORT_OF.values() if getattr(arta.transport, name, None)}
    io_threads = arta.transport.DEFAULT_POOL_SIZE  # a bare client gets as many I/O threads
    started = time.monotonic()

    results = {load.key: run_load(load, wanted, peer, io_threads, transports) for load in loads}
    lag: dict[str, Row] = {}
    if "c" in args.loads.split(",") and set(wanted) & set(LAG_ROWS):
        print(f"\nc) {lag_jobs} jobs in flight, in progress 4-8 s, a 10 ms ticker in the loop",
              file=sys.stderr)
        with emulator(("--queue-seconds", "0", "--progress-seconds", "4-8")) as server:
            for name in LAG_ROWS:
                if name in wanted and (name != "old-lag" or peer is not None):
                    python = peer if name == "old-lag" and peer else Path(sys.executable)
                    lag[name] = measure(name, server, lag_jobs, python, ticker=True)

    versions = next((r.versions for rows in [*results.values(), lag] for r in rows.values()
                     if r.versions), {})
    import requests

    print(f"\narta {arta.__version__} beside the old provider (g4f "
          f"{versions.get('g4f', G4F_VERSION)}, aiohttp {versions.get('aiohttp', '?')}) and bare "
          f"calls; requests {requests.__version__}, urllib3 "
          f"{__import__('urllib3').__version__}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores; {time.monotonic() - started:.0f} s in all.")
    print("CPU ms/job: user+sys of the client's own process after its imports / jobs; "
          "x old, x bare: that against the old provider's row and against bare calls on the "
          "same library, same load; status req/job, sign-ups: counted by the emulator; threads: peak; "
          "late: when the client had the URLs minus the job's finished_at at the emulator.")
    titles = {load.key: load.title for load in loads}
    for key, rows in results.items():
        if rows:
            print(f"\n{key}) {titles[key]}\n")
            print(load_table(rows, args.format))
    if lag:
        print(f"\nc) {lag_jobs:,} jobs in flight (in progress 4-8 s); a 10 ms ticker in the "
              "same event loop, how late it woke\n")
        print(lag_table(lag, args.format))
    print("\nGoals:\n")
    print("\n".join(goals(results, lag, lag_jobs)))


if __name__ == "__main__":
    main()
