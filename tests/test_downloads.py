"""Saving images from a server that misbehaves: hostile names, wrong types, huge or cut bodies."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import png_size

import arta
from arta.emulator.png import encode_rgb

PNG = encode_rgb(4, 3, [bytes(4 * 3)] * 3)
ROUTES: dict[str, tuple[str, bytes]] = {
    "/good.png": ("image/png", PNG),
    "/page.html": ("text/html", b"<html>not an image</html>"),
    "/big.png": ("image/png", PNG[:-12] + b"\0" * 300_000 + PNG[-12:]),
    "/cut.png": ("image/png", PNG[: len(PNG) // 2]),
    "/fake.png": ("image/png", b"GIF89a" + b"\0" * 100),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        mime, body = ROUTES.get(self.path.split("?")[0], ("text/plain", b"missing"))
        self.send_response(200 if self.path in ROUTES else 404)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.hits = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _result(server: http.server.ThreadingHTTPServer, path: str, *, name: str = "x.png",
            record_id: str = "job-1") -> arta.Result:
    url = f"http://127.0.0.1:{server.server_port}{path}"
    fast = arta.RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02, jitter=0)
    return arta.Result(record_id, (arta.Image(url, name, "image/png", False),), seed=1,
                       retry_policy=fast)


def test_a_hostile_name_or_record_id_cannot_leave_the_folder(server, tmp_path: Path) -> None:
    result = _result(server, "/good.png", name="../../../etc/passwd", record_id="../../up/../x")
    paths = result.save(tmp_path / "out")
    assert [p.parent for p in paths] == [tmp_path / "out"]
    assert paths[0].name == "up_.._x-0-s1.png" and png_size(paths[0]) == (4, 3)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [paths[0].name]
    template = result.save(tmp_path / "t", name="../{record_id}/{index}")
    assert template[0].parent == tmp_path / "t"


@pytest.mark.parametrize(("path", "words"), [
    ("/page.html", "sent text/html, not an image"),
    ("/fake.png", "not a PNG image"),
    ("/missing.png", "HTTP 404"),
])
def test_what_is_not_an_image_is_refused(server, tmp_path: Path, path: str, words: str) -> None:
    with pytest.raises(arta.errors.DownloadError, match=words) as caught:
        _result(server, path).save(tmp_path)
    assert caught.value.record_id == "job-1"
    assert list(tmp_path.iterdir()) == []  # no file, no temp file


def test_an_oversized_body_is_cut_off(server, tmp_path: Path) -> None:
    with pytest.raises(arta.errors.DownloadError, match="larger than the 100000-byte limit"):
        _result(server, "/big.png").save(tmp_path, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []
    assert png_size(_result(server, "/big.png").save(tmp_path)[0]) == (4, 3)  # default cap: fine


def test_a_body_cut_short_is_retried_then_refused(server, tmp_path: Path) -> None:
    with pytest.raises(arta.errors.ProtocolError, match="ended early"):
        _result(server, "/cut.png").save(tmp_path)
    assert server.hits.count("/cut.png") == 3  # every attempt of the retry policy
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_only_if_it_is_this_image(server, tmp_path: Path) -> None:
    result = _result(server, "/good.png")
    first = result.save(tmp_path)[0]
    assert result.save(tmp_path) == [first] and first.read_bytes() == PNG  # the same image
    first.write_bytes(b"mine")  # another file under this job's name: never taken for its image
    with pytest.raises(arta.errors.DownloadError, match="already exists and holds something else"):
        result.save(tmp_path)
    assert first.read_bytes() == b"mine"
    assert result.save(tmp_path, overwrite=True)[0].read_bytes() == PNG
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp file left
