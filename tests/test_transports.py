"""One conformance suite for every transport: requests, urllib3, httpx and in-process.

Each case is written once and run on each transport (``target`` is the same
:class:`~transport_cases.CaseApp`, over a loopback socket or called
in-process). The few cases that need a network, and so cannot apply
in-process (a connect timeout, a body cut short, a proxy, TLS), say so in
their skip reason; a refused connection is adapted: in-process, a host that
no app serves is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST_POLL, png_size
from transport_cases import (
    AppServer,
    CaseApp,
    DropSubmits,
    ForwardingProxy,
    pattern_bytes,
    refused_url,
    self_signed_certificate,
    unanswered_connect,
)

import arta
from arta import protocol
from arta.emulator import Emulator, EmulatorApp
from arta.transport import (
    HttpxTransport,
    InProcessTransport,
    LoggingTransport,
    Request,
    RequestsTransport,
    Response,
    Transport,
    Urllib3Transport,
    redact_url,
)

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["requests", "urllib3", "httpx", "inprocess"]
MiB = 1024 * 1024


def make_transport(kind: str, **options: Any) -> Transport:
    """A socket transport of ``kind`` with ``options``."""
    if kind == "requests":
        return RequestsTransport(**options)
    if kind == "urllib3":
        return Urllib3Transport(**options)
    if kind == "httpx":
        return HttpxTransport(**options)
    raise AssertionError(f"{kind} is not a socket transport")


def needs_sockets(kind: str, why: str) -> None:
    """Skip a case that only a transport with a network can meet."""
    if kind == "inprocess":
        pytest.skip(f"in-process: {why}")


@dataclass
class Target:
    """A transport, and the base URL at which it reaches ``app``."""

    kind: str
    transport: Transport
    base: str
    app: CaseApp

    def send(self, method: str, path: str, **fields: Any) -> Response:
        return self.transport.handle_request(Request(method, self.base + path, **fields))


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "httpx":
        pytest.importorskip("httpx")
    return str(request.param)


@pytest.fixture
def target(kind: str) -> Iterator[Target]:
    app = CaseApp()
    if kind == "inprocess":
        base = "http://cases.test"
        yield Target(kind, InProcessTransport(app, base_url=base), base, app)
        return
    with AppServer(app) as server:
        transport = make_transport(kind)
        try:
            yield Target(kind, transport, server.url, app)
        finally:
            transport.close()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NO_PROXY: the conftest exempts loopback, which a loopback proxy test cannot have."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


# -- bodies -------------------------------------------------------------------


def test_a_json_body_arrives_as_json(target: Target) -> None:
    payload = {"clientType": "CLIENT_TYPE_ANDROID", "text": "é ✓ \"q\"", "n": [1, 2.5, None, True]}
    with target.send("POST", "/echo?key=K&alt=json", json=payload,
                     headers={"Accept": "application/json"}) as response:
        echo = json.loads(response.read())
    assert response.status == 200
    assert echo["method"] == "POST" and echo["target"] == "/echo?key=K&alt=json"
    assert echo["content_type"] == "application/json" and echo["json"] == payload
    assert int(echo["headers"]["content-length"]) == echo["length"]


def test_an_url_encoded_form_arrives_as_the_same_fields(target: Target) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "AMf-a+b/c=d&e f%", "note": "é ✓"}
    with target.send("POST", "/echo", form=form) as response:
        echo = json.loads(response.read())
    assert echo["content_type"] == "application/x-www-form-urlencoded"
    assert echo["form"] == form


def test_a_multipart_form_arrives_as_the_same_fields(target: Target) -> None:
    fields = {"prompt": 'a "red" dragon; é ✓\r\nsecond line', "negative_prompt": "",
              "style": "Fantasy Art", "images_num": "2", "seed": "42"}
    with target.send("POST", "/echo", multipart=fields) as response:
        echo = json.loads(response.read())
    assert echo["content_type"].startswith("multipart/form-data; boundary=")
    assert echo["form"] == fields


def test_headers_go_out_and_come_back_case_insensitive(target: Target) -> None:
    with target.send("GET", "/echo", headers={"X-Trace": "abc", "Authorization": "tok"}) as response:
        echo = json.loads(response.read())
    assert echo["headers"]["x-trace"] == "abc" and echo["headers"]["authorization"] == "tok"
    assert response.headers["content-type"] == response.headers["CONTENT-TYPE"] == "application/json"


@pytest.mark.parametrize("code", [400, 401, 404, 422, 429, 500, 503])
def test_an_error_status_is_an_answer_not_an_exception(target: Target, code: int) -> None:
    with target.send("GET", f"/status/{code}") as response:
        assert response.status == code
        assert json.loads(response.read()) == {"detail": f"status {code}"}
        assert response.headers.get("Retry-After") == ("7" if code in (429, 503) else None)


# -- streamed and large bodies ------------------------------------------------


def test_a_large_body_streams_in_bounded_chunks_and_the_response_closes(target: Target) -> None:
    size = 24 * MiB
    digest, total, largest = hashlib.sha256(), 0, 0
    with target.send("GET", f"/bytes/{size}", stream=True) as response:
        assert response.status == 200 and not response.closed
        for chunk in response.iter_bytes():
            digest.update(chunk)
            total += len(chunk)
            largest = max(largest, len(chunk))
        assert response.closed  # iter_bytes closes at the end of the body
    assert total == size and largest <= MiB
    assert digest.hexdigest() == hashlib.sha256(pattern_bytes(size)).hexdigest()


def test_a_large_body_can_be_read_whole_up_to_the_settable_cap(target: Target) -> None:
    size = 4 * MiB + 3
    if target.kind != "inprocess":  # the in-process app is trusted: no cap there
        with pytest.raises(arta.errors.MalformedResponse, match="limit"):
            target.send("GET", f"/bytes/{size}")  # over the default 1 MiB cap
        transport = make_transport(target.kind, max_body_bytes=8 * MiB)
        target = Target(target.kind, transport, target.base, target.app)
    with target.send("GET", f"/bytes/{size}") as response:
        assert response.closed  # nothing held open: the body is already here
        assert response.read() == pattern_bytes(size)
    target.transport.close()


def test_a_stream_abandoned_early_is_closed_and_frees_its_connection(target: Target) -> None:
    with target.send("GET", f"/bytes/{64 * MiB}", stream=True) as response:
        chunks = response.iter_bytes()
        assert next(chunks)
        chunks.close()  # what a `break` out of a for loop does
        assert response.closed
    response.close()  # twice is fine
    for _ in range(5):  # the pool is not left holding a half-read connection
        with target.send("GET", "/echo", timeout=(2, 2)) as again:
            assert again.status == 200


def test_one_transport_serves_many_threads(target: Target) -> None:
    failures: list[Exception] = []

    def work(index: int) -> None:
        try:
            for round_ in range(5):
                with target.send("POST", "/echo", json={"i": index, "r": round_}) as response:
                    assert json.loads(response.read())["json"] == {"i": index, "r": round_}
        except (AssertionError, arta.ArtaError) as error:  # reported in the test's thread
            failures.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures and len(target.app.seen) == 24 * 5


# -- timeouts, refusals, drops: the error mapping -------------------------------


def test_no_answer_within_the_read_timeout_is_no_response(target: Target) -> None:
    # In-process, the app's own sleep cannot be interrupted: keep it short there.
    slow = "/slow/1.0" if target.kind == "inprocess" else "/slow/8.0"
    started = time.monotonic()
    with pytest.raises(arta.errors.NoResponseError, match="read timeout"):
        target.send("POST", slow, multipart={"prompt": "x"}, timeout=(5, 0.3))
    if target.kind != "inprocess":
        assert time.monotonic() - started < 5  # gave up at the read timeout, not after 8 s
    assert target.app.seen == [("POST", slow)]  # sent once, never again


def test_an_answer_marked_late_past_the_read_timeout_is_no_response(target: Target) -> None:
    started = time.monotonic()
    with pytest.raises(arta.errors.NoResponseError):
        target.send("GET", "/late/8.0", timeout=(5, 0.3))
    assert time.monotonic() - started < 5  # it gave up at the read timeout, not at 8 s
    with target.send("GET", "/late/0.05", timeout=(5, 2)) as response:  # within it: an answer
        assert response.status == 200


def test_a_connection_that_is_never_made_times_out_as_connect_error(kind: str) -> None:
    needs_sockets(kind, "no connection is made, so none can time out")
    with unanswered_connect() as url:
        if url is None:
            pytest.skip("this OS completes connections beyond a full backlog")
        transport = make_transport(kind)
        started = time.monotonic()
        try:
            with pytest.raises(arta.errors.ConnectError, match="connect"):
                transport.handle_request(Request("GET", url, timeout=(0.3, 30)))
        finally:
            transport.close()
    assert time.monotonic() - started < 5  # the connect timeout, not the 30 s read timeout


def test_a_refused_connection_is_connect_error(target: Target) -> None:
    # In-process this is adapted: a host that no app serves is refused the same way.
    with pytest.raises(arta.errors.ConnectError) as caught:
        target.transport.handle_request(Request("POST", refused_url(), multipart={"a": "b"}))
    assert not isinstance(caught.value, arta.errors.NoResponseError)
    assert target.app.seen == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dropped_connection_is_no_response_and_is_not_retried(target: Target, method: str) -> None:
    body = {"multipart": {"prompt": "a fox"}} if method == "POST" else {}
    with pytest.raises(arta.errors.NoResponseError):
        target.send(method, "/drop", **body)
    assert target.app.seen == [(method, "/drop")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_body_cut_short_is_no_response(kind: str, target: Target, stream: bool) -> None:
    needs_sockets(kind, "an in-memory body cannot be cut short")
    if not stream:
        with pytest.raises(arta.errors.NoResponseError):
            target.send("GET", f"/cut/{MiB}")
        return
    with target.send("GET", f"/cut/{MiB}", stream=True) as response:
        assert response.status == 200  # the headers came whole; the body will not
        with pytest.raises(arta.errors.NoResponseError, match="cut short"):
            response.read()
        assert response.closed


def test_errors_say_which_request_without_its_query_or_headers(target: Target) -> None:
    secret_headers = {"Authorization": "TOKEN-SECRET-123"}
    for url, error_type in ((refused_url() + "?key=KEY-SECRET-456", arta.errors.ConnectError),
                            (target.base + "/drop?key=KEY-SECRET-456", arta.errors.NoResponseError)):
        request = Request("POST", url, headers=secret_headers, form={"refresh_token": "BODY-SECRET"})
        with pytest.raises(error_type) as caught:
            target.transport.handle_request(request)
        error = caught.value
        assert isinstance(error, arta.TransportError) and isinstance(error, arta.ArtaError)
        assert url.split("?")[0] in str(error)
        for text in (str(error), repr(error), repr(request)):
            assert "SECRET" not in text


# -- proxies and TLS ------------------------------------------------------------


def test_a_proxy_argument_forwards_every_request(kind: str, no_proxy_env: None) -> None:
    needs_sockets(kind, "no network, so no proxy")
    app = CaseApp()
    with AppServer(app) as server, ForwardingProxy() as proxy:
        transport = make_transport(kind, proxies={"http": proxy.url})
        try:
            for index in range(3):
                with transport.handle_request(
                        Request("POST", f"{server.url}/echo", json={"i": index})) as response:
                    assert json.loads(response.read())["json"] == {"i": index}
        finally:
            transport.close()
    assert proxy.forwarded == [f"POST {server.url}/echo"] * 3
    assert len(app.seen) == 3


def test_proxy_variables_of_the_environment_and_no_proxy(kind: str, no_proxy_env: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    needs_sockets(kind, "no network, so no proxy")
    app = CaseApp()
    with AppServer(app) as server, ForwardingProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        for exempt, forwarded in ((None, 1), ("127.0.0.1", 1), (None, 2)):
            if exempt:
                monkeypatch.setenv("NO_PROXY", exempt)
            else:
                monkeypatch.delenv("NO_PROXY", raising=False)
            # An explicit proxy is exempted by NO_PROXY too, as in curl.
            for options in ({}, {"proxies": {"http": proxy.url}}):
                transport = make_transport(kind, **options)  # httpx reads the environment here
                try:
                    with transport.handle_request(Request("GET", f"{server.url}/echo")) as response:
                        assert response.status == 200
                finally:
                    transport.close()
            assert len(proxy.forwarded) == 2 * forwarded
    assert len(app.seen) == 6


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    made = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    if made is None:
        pytest.skip("needs the openssl command to make a certificate")
    return made


def test_tls_is_verified_and_a_ca_bundle_is_trusted(kind: str, certificate: tuple[Path, Path]) -> None:
    needs_sockets(kind, "no TLS without a connection")
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with AppServer(CaseApp(), tls=context) as server:
        url = f"{server.url}/echo"
        transport = make_transport(kind)
        try:
            with pytest.raises(arta.errors.ConnectError):  # self-signed: not trusted by default
                transport.handle_request(Request("GET", url))
        finally:
            transport.close()
        transport = make_transport(kind, ca_bundle=str(cert))
        try:
            with transport.handle_request(Request("GET", url)) as response:
                assert response.status == 200 and json.loads(response.read())["method"] == "GET"
        finally:
            transport.close()


def test_a_session_with_verification_off_is_refused() -> None:
    import requests

    session = requests.Session()
    session.verify = False
    with pytest.raises(arta.ConfigurationError, match="ca_bundle"):
        RequestsTransport(session=session)


# -- the client on each transport -----------------------------------------------


def _client_transport(kind: str, emulator: Emulator) -> Transport:
    return InProcessTransport(emulator) if kind == "inprocess" else make_transport(kind)


def test_a_client_generates_end_to_end(kind: str, tmp_path: Path) -> None:
    with Emulator(queue_seconds=0.02, progress_seconds=0.02) as emulator:
        transport = _client_transport(kind, emulator)
        try:
            with arta.Client(emulator.url, home=tmp_path / "home", transport=transport,
                             poll_policy=FAST_POLL) as client:
                result = client.generate("a lighthouse", n=2, seed=9, aspect_ratio="16:9")
                paths = result.save(tmp_path / "out")  # streamed downloads
                token = client.token_store.load()
                assert token is not None
                refreshed = protocol.parse_refresh(transport.handle_request(  # a form body
                    protocol.refresh_request(client.settings, token.refresh_token)))
        finally:
            transport.close()
        stats = emulator.stats()
    assert [png_size(path) for path in paths] == [(512, 288)] * 2
    assert refreshed.user_id == token.user_id
    assert (stats["signups"], stats["refreshes"], stats["submits"], stats["downloads"]) == (1, 1, 1, 2)


def test_a_submit_that_got_no_answer_is_not_sent_again(kind: str, tmp_path: Path) -> None:
    with Emulator(queue_seconds=0.02, progress_seconds=0.02) as emulator:
        app = DropSubmits(emulator.app)  # the job is made, its answer dropped
        if kind == "inprocess":
            transport: Transport = InProcessTransport(app, base_url=emulator.url)
            endpoint = emulator.url
            server = None
        else:
            server = AppServer(app).__enter__()
            transport, endpoint = make_transport(kind), server.url
        try:
            with arta.Client(endpoint, home=tmp_path, transport=transport,
                             poll_policy=FAST_POLL) as client, \
                    pytest.raises(arta.SubmitOutcomeUnknown):
                client.submit("a fox")
        finally:
            transport.close()
            if server is not None:
                server.__exit__()
        assert emulator.stats()["submits"] == 1


@pytest.mark.parametrize(("fault", "error"), [("drop", arta.errors.NoResponseError),
                                               ("slow", arta.errors.NoResponseError), ("503", None)])
def test_the_emulators_own_faults_come_out_the_same_on_every_transport(
        kind: str, fault: str, error: type[Exception] | None) -> None:
    with Emulator(slow_seconds=10.0) as emulator:
        transport = _client_transport(kind, emulator)
        emulator.app.inject("signup", fault)
        settings = arta.Client(emulator.url).settings  # the URLs only
        started = time.monotonic()
        try:
            if error is None:
                with transport.handle_request(protocol.signup_request(settings)) as response:
                    assert response.status == 503 and response.headers["Retry-After"] == "1"
            else:
                with pytest.raises(error):
                    transport.handle_request(replace(protocol.signup_request(settings), timeout=(5, 0.4)))
        finally:
            transport.close()
    assert time.monotonic() - started < 5  # a slow (10 s) answer is given up at the read timeout
    assert emulator.app.fault_counts() == {f"signup:{fault}": 1}


# -- in-process specifics -------------------------------------------------------


def test_in_process_a_client_needs_no_endpoint_and_opens_no_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*args: object) -> None:
        raise AssertionError("the in-process transport opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_socket)
    app = EmulatorApp(queue_seconds=0, progress_seconds=0)
    with arta.Client(transport=InProcessTransport(app), home=tmp_path / "home",
                     poll_policy=FAST_POLL) as client:
        result = client.generate("a fox", seed=4)
        paths = result.save(tmp_path / "out")
    assert result.urls[0].startswith("http://img-gen-prod.ai-arta.com/images/")
    assert png_size(paths[0]) == (512, 512)
    assert app.stats()["signups"] == 1 and app.stats()["downloads"] == 1


def test_in_process_an_app_may_stream_an_iterable_body() -> None:
    app = CaseApp()
    transport = InProcessTransport(app, base_url="http://cases.test")
    with transport.handle_request(Request("GET", "http://cases.test/bytes/1000000")) as whole:
        assert whole.read() == pattern_bytes(1_000_000)
    with transport.handle_request(Request("HEAD", "http://cases.test/echo")) as head:
        assert head.status == 200 and head.read() == b""


# -- the logging wrapper ----------------------------------------------------------


def test_logging_shows_method_redacted_url_status_and_latency_only(
        target: Target, caplog: pytest.LogCaptureFixture) -> None:
    logged = LoggingTransport(target.transport, logging.getLogger("test.transport"), logging.INFO)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJ1c2VyX2lkIjoiYWJjIn0.c2lnbmF0dXJl"
    url = f"{target.base}/echo?key=AIzaSyB3-SECRETSECRETSECRET&alt=json&id_token={jwt}&page=2"
    with caplog.at_level(logging.INFO, logger="test.transport"):
        with logged.handle_request(Request("POST", url, headers={"Authorization": "HEADER-SECRET"},
                                           form={"refresh_token": "BODY-SECRET"})) as response:
            assert response.status == 200
        with pytest.raises(arta.errors.ConnectError):
            logged.handle_request(Request("GET", refused_url() + "?token=Q-SECRET"))
    first, second = (record.getMessage() for record in caplog.records)
    assert re.fullmatch(
        rf"POST {re.escape(target.base)}/echo\?key=REDACTED&alt=json&id_token=REDACTED&page=2"
        r" -> 200 in \d+\.\d ms", first), first
    assert re.fullmatch(r"GET http://127\.0\.0\.1:\d+/echo\?token=REDACTED -> ConnectError after"
                        r" \d+\.\d ms", second), second
    assert "SECRET" not in caplog.text


def test_logging_costs_nothing_when_its_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    app = CaseApp()
    logged = LoggingTransport(InProcessTransport(app, base_url="http://cases.test"))
    with caplog.at_level(logging.INFO, logger="arta.transport"):
        logged.handle_request(Request("GET", "http://cases.test/echo")).close()
    assert caplog.records == [] and len(app.seen) == 1


@pytest.mark.parametrize(("url", "expected"), [
    ("https://www.googleapis.com/x?key=AIzaSyB3-71wG0fIt0shj0ee4fvx1shcjJHGrrQ",
     "https://www.googleapis.com/x?key=REDACTED"),
    ("http://h/a?api_key=1&Access_Token=2&client_secret=3&X-Amz-Signature=4&page=5&q=a+b",
     ("http://h/a?api_key=REDACTED&Access_Token=REDACTED&client_secret=REDACTED"
      "&X-Amz-Signature=REDACTED&page=5&q=a+b")),
    ("http://h/a?v=eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.&flag&empty=",
     "http://h/a?v=REDACTED&flag&empty="),
    ("http://user:pa55@h:8/p/eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.sig/status",
     "http://user:REDACTED@h:8/p/REDACTED/status"),
    ("http://h/api/v1/text2image/3f2a0c1e-8b7d-4e6f-9a1b-2c3d4e5f6a7b/status",
     "http://h/api/v1/text2image/3f2a0c1e-8b7d-4e6f-9a1b-2c3d4e5f6a7b/status"),
    ("http://h/a?v=Zx8Qw2Lm9Np4Rt7Yu1Io3Pa6Sd5Fg0HjKl", "http://h/a?v=REDACTED"),
])
def test_redact_url_keeps_the_shape_and_hides_secrets(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# -- the value types --------------------------------------------------------------


def test_a_request_has_at_most_one_body_and_splits_its_timeout() -> None:
    with pytest.raises(ValueError, match="at most one body"):
        Request("POST", "http://h/", json={}, form={})
    request = Request("POST", "http://h/?key=K", timeout=(1.5, 9), headers={"content-type": "x/y"},
                      form={"a": "1"})
    assert (request.connect_timeout, request.read_timeout) == (1.5, 9)
    assert Request("GET", "http://h/", timeout=4).read_timeout == 4.0
    assert request.encode() == ({"content-type": "x/y"}, b"a=1")  # a caller's type is kept
    assert repr(request) == "Request(POST http://h/)"


def test_a_response_closes_once_as_a_context_manager() -> None:
    closes: list[int] = []
    with Response(200, {"A": "b"}, chunks=iter([b"x", b"y"]), close=lambda: closes.append(1)) as r:
        assert not r.closed and r.headers["a"] == "b"
    assert r.closed and closes == [1]
    r.close()
    assert closes == [1]


# -- httpx stays optional --------------------------------------------------------------


def test_import_arta_does_not_import_httpx() -> None:
    code = "import sys, arta, arta.transport; print('httpx' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "False"


def test_without_httpx_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)  # what `import httpx` sees when it is missing
    with pytest.raises(arta.ConfigurationError, match=re.escape("pip install 'arta-client[httpx]'")):
        HttpxTransport()


def test_httpx_speaks_http2_when_h2_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("httpx")
    from arta.transport import httpx_transport

    monkeypatch.setattr(httpx_transport, "h2_available", lambda: False)
    assert HttpxTransport().http2 is False
    with pytest.raises(arta.ConfigurationError, match="h2"):
        HttpxTransport(http2=True)
    monkeypatch.undo()
    pytest.importorskip("h2")
    transport = HttpxTransport()
    assert transport.http2 is True
    transport.close()


# -- the documentation's own transport (docs/transports.rst) ------------------------


def _readme_transport() -> type:
    text = (ROOT / "docs" / "transports.rst").read_text(encoding="utf-8")
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text)
    code = next(block for block in blocks if "class UrllibTransport" in block)
    code = code.split("\n    client = ", 1)[0]  # the class, not the use of it (test_examples runs that)
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(code), "transports.rst", "exec"), namespace)  # noqa: S102 - our docs
    return namespace["UrllibTransport"]  # type: ignore[no-any-return]


def test_the_readme_transport_works(tmp_path: Path) -> None:
    transport = _readme_transport()()
    with Emulator(queue_seconds=0.02, progress_seconds=0.02) as emulator, \
            arta.Client(emulator.url, home=tmp_path, transport=transport,
                        poll_policy=FAST_POLL) as client:
        paths = client.generate("a fox", seed=2).save(tmp_path / "out")
        assert png_size(paths[0]) == (512, 512)
    with pytest.raises(arta.errors.ConnectError):
        transport.handle_request(Request("GET", refused_url()))
