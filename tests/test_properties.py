"""Property tests: the protocol parsers and the token-file reader take any bytes.

Whatever a server (or a corrupted disk) hands them, they answer a value or a
typed :class:`arta.ArtaError`, never another exception: no ``KeyError``,
``RecursionError``, ``OverflowError`` or ``UnicodeDecodeError`` escapes.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arta
from arta import protocol
from arta.auth import FileTokenStore, Token
from arta.retry import retry_after
from arta.transport import Request, Response, read_body

FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                     st.text(max_size=20),
                     st.sampled_from(["NaN", "inf", "-inf", "-5", "1e999", "3600", "DONE",
                                      "FAILED", "\x1b[2J", "\ud800"]))
_json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(
                                   ["record_id", "status", "response", "url", "MIME", "seed",
                                    "error_code", "error_details", "detail", "loc", "msg",
                                    "idToken", "refreshToken", "expiresIn", "localId",
                                    "id_token", "refresh_token", "expires_in", "user_id",
                                    "error", "message", "expiresAt", "obtainedAt"]) | st.text(
                                   max_size=8), children, max_size=6)),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"{}"


#: Bodies: raw bytes, JSON of any shape, and nesting deep enough to break a recursive parser.
bodies = st.one_of(
    st.binary(max_size=200),
    _json_values.map(_dumps),
    st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=10_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
)
statuses = st.one_of(st.sampled_from([200, 400, 401, 403, 404, 422, 429, 500, 502, 503]),
                     st.integers(min_value=100, max_value=599))
header_values = st.one_of(st.text(max_size=40),
                          st.sampled_from(["99999999", "nan", "inf", "-1", "1e308", "1e999",
                                           "Fri, 31 Dec 9999 23:59:59 GMT",
                                           "Mon, 01 Jan 0001 00:00:00 GMT", "0"]))


def _answers(parse: Callable[[Response], Any], status: int, body: bytes,
             retry_after: str) -> None:
    response = Response(status, {"Retry-After": retry_after}, content=body)
    try:
        parse(response)
    except arta.ArtaError:
        pass


@FAST
@given(statuses, bodies, header_values)
def test_parse_job_answers_a_state_or_a_typed_error(status: int, body: bytes, wait: str) -> None:
    _answers(lambda r: protocol.parse_job(r, "status", "job-1"), status, body, wait)


@FAST
@given(statuses, bodies, header_values)
def test_parse_signup_answers_a_grant_or_a_typed_error(status: int, body: bytes,
                                                       wait: str) -> None:
    _answers(protocol.parse_signup, status, body, wait)


@FAST
@given(statuses, bodies, header_values)
def test_parse_refresh_answers_a_grant_or_a_typed_error(status: int, body: bytes,
                                                        wait: str) -> None:
    _answers(protocol.parse_refresh, status, body, wait)


@FAST
@given(header_values)
def test_retry_after_is_none_or_a_finite_wait(value: str) -> None:
    seconds = retry_after({"Retry-After": value})
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@FAST
@given(bodies)
def test_the_token_file_reader_answers_a_token_or_none(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "auth_ARTA.json"
    path.write_bytes(data)
    token = FileTokenStore(path).load()
    assert token is None or isinstance(token, Token)


@FAST
@given(_json_values)
def test_token_from_json_answers_a_token_or_a_value_error(value: Any) -> None:
    try:
        token = Token.from_json(value)
    except ValueError:
        return
    assert math.isfinite(token.expires_at) and math.isfinite(token.obtained_at)


@FAST
@given(st.lists(st.binary(max_size=300), max_size=8),
       st.sampled_from(["", "identity", "gzip", "deflate", "br", "gzip, gzip"]),
       st.booleans())
def test_read_body_answers_bytes_or_a_typed_error(chunks: list[bytes], encoding: str,
                                                  compress: bool) -> None:
    if compress and encoding in ("gzip", "deflate"):
        packer = zlib.compressobj(wbits=31 if encoding == "gzip" else 15)
        chunks = [packer.compress(b"".join(chunks)) + packer.flush()]
    request = Request("GET", "http://127.0.0.1:9/x", timeout=(1, 5))
    try:
        body = read_body(iter(chunks), {"Content-Encoding": encoding}, request, limit=1000)
    except arta.ArtaError:
        return
    assert len(body) <= 1000
