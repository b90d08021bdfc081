"""Speed, CPU and memory of each transport, beside bare ``requests``, in one run.

0. CPU per request: one status GET after another, against the emulator
   over loopback (in its own process, so that its CPU is not counted), on
   each bare HTTP stack (``http.client``, a urllib3 pool, a requests
   session and its adapter, an httpx client) and through each arta
   transport's ``handle_request``, with the ratio of each transport to the
   bare call on the same stack, all measured in the same run. The CPU is
   the whole process's (the watchdog thread included), best of several
   interleaved rounds.

1. Throughput: N generations (submit, one status poll, the image streamed
   to disk) through ``arta.Client`` on each transport, against the emulator
   over loopback (``Emulator(queue_seconds=0, progress_seconds=0)``, in its
   own process so that its CPU is not counted), beside bare ``requests``
   making the same calls by hand (sign up once, then submit + status +
   download). The same calls by hand through each socket transport
   (``transport.handle_request``, no client) show the transport's own cost
   apart from the client's (token store, retries, safe saving). It reports
   HTTP requests per second and the client's CPU per generation, with
   ratios against bare ``requests``. The in-process
   transport calls the emulator's app in the benchmark's own process: the
   app's own CPU is measured and left out of the figure, so that it is the
   transport's (and the client's) cost alone.

2. Memory: the peak RSS of a fresh process that downloads a large body
   (200 MB by default) through each transport, streamed in chunks versus
   read whole; one subprocess per case, measured with
   ``resource.getrusage(...).ru_maxrss``.

    python benchmarks/transports.py [--gets 2000] [--generations 300] [--rounds 3]
                                    [--size-mb 200] [--parts cpu,throughput,memory]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a clone, installed or not: imports below need it

import requests
import requests.adapters
import urllib3

import arta
from arta.transport import (
    HttpxTransport,
    InProcessTransport,
    Request,
    RequestsTransport,
    Transport,
    Urllib3Transport,
)

PROMPT = "a lighthouse at dusk"
SEED = 1234  # one seed: the emulator renders the image once and serves it from its cache
FAST = arta.PollPolicy(first_delay=0.001, growth=1.0, max_delay=0.001, jitter=0.0)
CHUNK = 64 * 1024
_EMULATOR = (
    "from arta.emulator import Emulator\n"
    "Emulator(port=0, queue_seconds=0, progress_seconds=0)"
    ".serve_forever(lambda e: print(e.url, flush=True))\n"
)


# -- 0. CPU per status GET -------------------------------------------------------------


def _start_emulator() -> tuple[subprocess.Popen[str], str]:
    """The emulator in its own process (its CPU is not ours), and its URL."""
    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def _status_request(url: str, folder: Path) -> Request:
    """A status GET of one submitted job: the request a poll sends."""
    from arta import api
    from arta.params import GenerationParams

    settings = arta.Client(url, home=folder).settings  # the URLs only
    transport = RequestsTransport()
    try:
        token = api.parse_signup(transport.handle_request(api.signup_request(settings))).id_token
        job = api.parse_job(transport.handle_request(
            api.submit_request(settings, token, GenerationParams.create(PROMPT, seed=SEED))))
    finally:
        transport.close()
    return api.status_request(settings, token, job.record_id)


def cpu_per_get(gets: int, rounds: int) -> list[tuple[str, float, str]]:
    """Rows of (case, CPU µs per status GET, the bare case of the same stack or "").

    Each case sends the same GET (same headers), reads the whole body, and
    parses nothing; each is warmed up (connections made) before it counts.
    """
    from arta.emulator import EmulatorApp

    server, url = _start_emulator()
    closers: list[Callable[[], None]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="arta-bench-") as folder:
            request = _status_request(url, Path(folder))
        headers = dict(request.headers)
        parts = urlsplit(request.url)
        host, port, path = parts.hostname or "", parts.port or 80, parts.path

        connection = http.client.HTTPConnection(host, port)
        closers.append(connection.close)

        def bare_http_client() -> None:
            connection.request("GET", path, headers=headers)
            connection.getresponse().read()

        pool = urllib3.HTTPConnectionPool(host, port, maxsize=1, retries=False)
        closers.append(pool.close)

        def bare_urllib3() -> None:
            pool.urlopen("GET", path, headers=headers, timeout=urllib3.Timeout(5, 30)).data  # noqa: B018

        session = requests.Session()
        closers.append(session.close)

        def bare_session() -> None:
            session.get(request.url, headers=headers, timeout=(5, 30)).content  # noqa: B018

        adapter = requests.adapters.HTTPAdapter(max_retries=0)
        closers.append(adapter.close)
        prepared = requests.Request("GET", request.url, headers=headers).prepare()

        def bare_adapter() -> None:
            adapter.send(prepared, timeout=(5, 30)).content  # noqa: B018

        cases: list[tuple[str, Callable[[], None], str]] = [
            ("bare http.client", bare_http_client, ""),
            ("bare urllib3 pool", bare_urllib3, ""),
            ("bare requests Session.get", bare_session, ""),
            ("bare requests adapter.send", bare_adapter, ""),
        ]
        transports: list[tuple[str, Transport, str]] = [
            ("RequestsTransport", RequestsTransport(), "bare requests Session.get"),
            ("Urllib3Transport", Urllib3Transport(), "bare urllib3 pool"),
        ]
        try:
            import httpx

            client = httpx.Client()
            closers.append(client.close)

            def bare_httpx() -> None:
                client.get(request.url, headers=headers, timeout=httpx.Timeout(30, connect=5)).content  # noqa: B018

            cases.append(("bare httpx Client.get", bare_httpx, ""))
            transports.append(("HttpxTransport", HttpxTransport(), "bare httpx Client.get"))
        except ImportError:
            print("  httpx not installed: its rows are skipped", file=sys.stderr)
        for name, transport, bare in transports:
            closers.append(transport.close)
            cases.append((f"{name}.handle_request", lambda t=transport: t.handle_request(request),
                          bare))
        # In-process: the same GET to the app in this process, beside the app's
        # own ``handle`` called directly (the app's work is in both).
        app = EmulatorApp(queue_seconds=0, progress_seconds=0)
        inprocess = InProcessTransport(app, base_url="http://arta.test")
        local = _status_request_in_process(inprocess)
        app_request = _app_request(local)
        cases.append(("bare EmulatorApp.handle", lambda: app.handle(app_request), ""))
        cases.append(("InProcessTransport.handle_request",
                      lambda: inprocess.handle_request(local), "bare EmulatorApp.handle"))

        best: dict[str, float] = {}
        for name, call, _ in cases:  # warm up: connections, caches, the watchdog's thread
            for _ in range(100):
                call()
        for _ in range(rounds):
            for name, call, _ in cases:
                started = time.process_time()
                for _ in range(gets):
                    call()
                cost = (time.process_time() - started) / gets * 1e6
                best[name] = min(best.get(name, cost), cost)
        return [(name, best[name], bare) for name, _, bare in cases]
    finally:
        for close in closers:
            close()
        server.terminate()
        server.wait(10)


def _status_request_in_process(transport: InProcessTransport) -> Request:
    from arta import api
    from arta.params import GenerationParams

    settings = arta.Client("http://arta.test", home=tempfile.mkdtemp(prefix="arta-bench-")).settings
    token = api.parse_signup(transport.handle_request(api.signup_request(settings))).id_token
    job = api.parse_job(transport.handle_request(
        api.submit_request(settings, token, GenerationParams.create(PROMPT, seed=SEED))))
    return api.status_request(settings, token, job.record_id)


def _app_request(request: Request) -> Any:
    """What the in-process transport hands the app for ``request``."""
    from arta.emulator.messages import Request as AppRequest

    parts = urlsplit(request.url)
    headers, _ = request.encode()
    return AppRequest(request.method, parts.path, {**headers, "Host": parts.netloc}, b"")


def print_cpu(rows: list[tuple[str, float, str]], gets: int, rounds: int) -> None:
    """The table of :func:`cpu_per_get`."""
    print(f"CPU per sequential status GET against the emulator over loopback: {gets} GETs per"
          f" round, best of {rounds} interleaved rounds\n")
    costs = {name: cost for name, cost, _ in rows}
    print(f"{'case':36} {'CPU us/GET':>11}  {'x bare, same stack':>19}")
    for name, cost, bare in rows:
        ratio = f"{cost / costs[bare]:6.2f} ({bare})" if bare else ""
        print(f"{name:36} {cost:11.1f}  {ratio}")


# -- 1. throughput and CPU -----------------------------------------------------------


class MeteredApp:
    """Wraps the emulator's app and adds up the CPU its own work takes (in-process only)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cpu = 0.0

    def handle(self, request: Any) -> Any:
        started = time.thread_time()
        try:
            return self.app.handle(request)
        finally:
            self.cpu += time.thread_time() - started


def bare_requests(url: str, generations: int, folder: Path) -> None:
    """The same calls by hand with one requests.Session: what a careful script would do."""
    settings = arta.Client(url, home=folder).settings  # the URLs only; this client sends nothing
    with requests.Session() as session:
        token = session.post(settings.signup_url, json={"clientType": "CLIENT_TYPE_ANDROID"},
                             timeout=30).json()["idToken"]
        form = {"prompt": PROMPT, "negative_prompt": "blurry", "style": "Flux", "images_num": "1",
                "cfg_scale": "7", "steps": "30", "aspect_ratio": "1:1", "seed": str(SEED)}
        for _ in range(generations):
            job = session.post(settings.submit_url, headers={"Authorization": token},
                               files={name: (None, value) for name, value in form.items()},
                               timeout=30).json()
            status = session.get(settings.status_url(job["record_id"]),
                                 headers={"Authorization": token}, timeout=30).json()
            assert status["status"] == "DONE", status
            with session.get(status["response"][0]["url"], stream=True, timeout=30) as image, \
                    open(folder / "image.png", "wb") as file:
                file.writelines(image.iter_content(CHUNK))


def by_hand(make: Callable[[], Transport]) -> Callable[[str, int, Path], None]:
    """The bare-requests calls, sent through a transport: its own cost, without the client's."""

    def run(url: str, generations: int, folder: Path) -> None:
        from arta import protocol
        from arta.params import GenerationParams

        settings = arta.Client(url, home=folder).settings
        params = GenerationParams.create(PROMPT, seed=SEED)
        transport = make()
        try:
            token = protocol.parse_signup(transport.handle_request(protocol.signup_request(settings))).id_token
            for _ in range(generations):
                job = protocol.parse_job(transport.handle_request(
                    protocol.submit_request(settings, token, params)))
                state = protocol.parse_job(transport.handle_request(
                    protocol.status_request(settings, token, job.record_id)))
                assert state.status == "DONE", state
                with transport.handle_request(protocol.image_request(state.images[0].url)) as image, \
                        open(folder / "image.png", "wb") as file:
                    file.writelines(image.iter_bytes())
        finally:
            transport.close()

    return run


def through_arta(transport: Transport) -> Callable[[str, int, Path], None]:
    """N generations through ``arta.Client`` on ``transport``, each image saved."""

    def run(url: str, generations: int, folder: Path) -> None:
        with arta.Client(url, home=folder / "home", transport=transport, poll_policy=FAST) as client:
            for _ in range(generations):
                client.generate(PROMPT, seed=SEED).save(folder / "out", overwrite=True)

    return run


def measure(run: Callable[[str, int, Path], None], url: str, generations: int,
            app: MeteredApp | None = None) -> tuple[float, float]:
    """(HTTP requests per second, client CPU ms per generation) of ``generations`` runs."""
    with tempfile.TemporaryDirectory(prefix="arta-bench-") as folder:
        run(url, 5, Path(folder))  # warm up: sign-up, connections, caches
        if app is not None:
            app.cpu = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        run(url, generations, Path(folder))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if app is not None:
        cpu -= app.cpu  # the service's work is not the transport's
    return 3 * generations / wall, 1000 * cpu / generations


def throughput(generations: int, rounds: int) -> list[tuple[str, float, float]]:
    """Rows of (name, requests/s, CPU ms per generation), bare requests first.

    The cases take turns, ``rounds`` times, and each figure is the best of
    its rounds (as ``timeit`` does: noise only ever slows a run down), so a
    machine busy with something else for a moment favours no case.
    """
    from arta.emulator import EmulatorApp

    server = subprocess.Popen([sys.executable, "-c", _EMULATOR], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        cases: list[tuple[str, Callable[[], tuple[float, float]]]] = [
            ("bare requests (baseline)", lambda: measure(bare_requests, url, generations)),
            ("RequestsTransport by hand", lambda: measure(by_hand(RequestsTransport), url,
                                                          generations)),
            ("Urllib3Transport by hand", lambda: measure(by_hand(Urllib3Transport), url,
                                                         generations)),
        ]
        try:
            HttpxTransport().close()
            has_httpx = True
        except arta.ConfigurationError as error:
            print(f"  HttpxTransport skipped: {error}", file=sys.stderr)
            has_httpx = False
        if has_httpx:
            cases.append(("HttpxTransport by hand", lambda: measure(by_hand(HttpxTransport), url,
                                                                    generations)))
        cases.append(("arta + RequestsTransport", lambda: _on(RequestsTransport(), url, generations)))
        cases.append(("arta + Urllib3Transport", lambda: _on(Urllib3Transport(), url, generations)))
        if has_httpx:
            cases.append(("arta + HttpxTransport", lambda: _on(HttpxTransport(), url, generations)))

        def in_process() -> tuple[float, float]:
            app = MeteredApp(EmulatorApp(queue_seconds=0, progress_seconds=0))
            transport = InProcessTransport(app, base_url="http://arta.test")
            return measure(through_arta(transport), "http://arta.test", generations, app)

        cases.append(("arta + InProcessTransport", in_process))
        results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in cases}
        for _ in range(rounds):
            for name, run in cases:
                results[name].append(run())
        return [(name, max(r for r, _ in runs), min(c for _, c in runs))
                for name, runs in results.items()]
    finally:
        server.terminate()
        server.wait(10)


def _on(transport: Transport, url: str, generations: int) -> tuple[float, float]:
    try:
        return measure(through_arta(transport), url, generations)
    finally:
        transport.close()


# -- 2. peak memory ----------------------------------------------------------------------


def _pattern(size: int) -> Iterator[bytes]:
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


class _BigBody(BaseHTTPRequestHandler):
    """``GET /N`` answers N bytes, written a chunk at a time (the server stays flat too)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        size = int(self.path.strip("/"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        try:
            for chunk in _pattern(size):
                self.wfile.write(chunk)
        except OSError:
            pass  # the client went away; nothing to clean up

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _BigApp:
    """The in-process twin of ``_BigBody``: an app whose answer body is an iterator."""

    def handle(self, request: Any) -> Any:
        from arta.emulator import Response

        size = int(request.path.strip("/"))
        response = Response(200, {"Content-Length": str(size)}, b"")
        response.body = _pattern(size)  # an iterable body: streamed as it comes
        return response


def _max_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def rss_child(kind: str, mode: str, url: str, size: int) -> None:
    """Run in a subprocess: download ``size`` bytes; print JSON of RSS before and at peak."""
    transport: Transport | None = None
    # A whole body is capped (1 MiB by default, for JSON answers): raise the cap
    # for this test body, so that "whole" measures reading it whole.
    if kind == "requests":
        transport = RequestsTransport(max_body_bytes=size + 1)
    elif kind == "urllib3":
        transport = Urllib3Transport(max_body_bytes=size + 1)
    elif kind == "httpx":
        transport = HttpxTransport(max_body_bytes=size + 1)
    elif kind == "inprocess":
        transport = InProcessTransport(_BigApp(), base_url=url)
    before = _max_rss_mb()
    received = 0
    started = time.perf_counter()
    if transport is None:  # bare requests
        if mode == "stream":
            with requests.get(f"{url}/{size}", stream=True, timeout=60) as answer:
                for chunk in answer.iter_content(CHUNK):
                    received += len(chunk)
        else:
            received = len(requests.get(f"{url}/{size}", timeout=60).content)
    else:
        request = Request("GET", f"{url}/{size}", stream=mode == "stream", timeout=(5, 60))
        with transport.handle_request(request) as response:
            if mode == "stream":
                for chunk in response.iter_bytes():
                    received += len(chunk)
            else:
                received = len(response.read())
        transport.close()
    assert received == size, (received, size)
    print(json.dumps({"before": before, "peak": _max_rss_mb(),
                      "seconds": time.perf_counter() - started}))


# ru_maxrss survives exec: a child forked from this (by now large) process
# would report this process's peak as its own. So the children are forked by
# a small launcher that imports nothing but the standard library.
_LAUNCHER = (
    "import json, subprocess, sys\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)\n"
    "    print(json.dumps([done.returncode, done.stdout, done.stderr]), flush=True)\n"
)


def memory(size_mb: int) -> list[tuple[str, str, float, float, float]]:
    """Rows of (case, mode, RSS before MB, peak MB, seconds), one fresh process each."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BigBody)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cases = [(kind, mode) for kind in ("bare-requests", "requests", "urllib3", "httpx", "inprocess")
             for mode in ("stream", "whole")]
    argvs = [[sys.executable, __file__, "--rss-child", kind, mode,
              "http://arta.test" if kind == "inprocess" else url, str(size_mb * 1024 * 1024)]
             for kind, mode in cases]
    try:
        launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, json.dumps(argvs)],
                                  capture_output=True, text=True, check=True, timeout=600,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        server.shutdown()
        server.server_close()
    rows = []
    for (kind, mode), line in zip(cases, launcher.stdout.splitlines()):
        code, out, err = json.loads(line)
        if code != 0:
            print(f"  {kind} {mode} failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        result = json.loads(out)
        rows.append((kind, mode, result["before"], result["peak"], result["seconds"]))
    return rows


def main() -> None:
    """Run both parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=300, help="generations per transport")
    parser.add_argument("--rounds", type=int, default=3, help="turns each case takes (best kept)")
    parser.add_argument("--size-mb", type=int, default=200, help="size of the large download")
    parser.add_argument("--gets", type=int, default=2000, help="status GETs per case and round")
    parser.add_argument("--parts", default="cpu,throughput,memory",
                        help="which tables, comma-separated: cpu, throughput, memory")
    parser.add_argument("--rss-child", nargs=4, metavar=("KIND", "MODE", "URL", "SIZE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        kind, mode, url, size = args.rss_child
        rss_child(kind, mode, url, int(size))
        return

    parts = {part.strip() for part in args.parts.split(",")}
    started = time.perf_counter()
    if "cpu" in parts:
        print_cpu(cpu_per_get(args.gets, args.rounds), args.gets, args.rounds)
        print()
    if "throughput" in parts:
        print(f"Throughput: {args.generations} generations per round (submit + status + image ="
              f" 3 requests), best of {args.rounds} rounds, emulator over loopback\n")
        rows = throughput(args.generations, args.rounds)
        base_rps, base_cpu = rows[0][1], rows[0][2]
        print(f"{'case':28} {'req/s':>8} {'x bare':>7} {'CPU ms/gen':>11} {'x bare':>7}")
        for name, rps, cpu in rows:
            print(f"{name:28} {rps:8.0f} {rps / base_rps:7.2f} {cpu:11.2f} {cpu / base_cpu:7.2f}")
        print()
    if "memory" in parts:
        print(f"Peak RSS downloading {args.size_mb} MB (a fresh process per case)\n")
        print(f"{'transport':16} {'mode':8} {'RSS before MB':>14} {'peak MB':>8} "
              f"{'growth MB':>10} {'seconds':>8}")
        for kind, mode, before, peak, seconds in memory(args.size_mb):
            print(f"{kind:16} {mode:8} {before:14.1f} {peak:8.1f} {peak - before:10.1f} "
                  f"{seconds:8.3f}")
        print()
    print(f"(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
