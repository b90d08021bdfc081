"""Pictures to look at: images in memory, as streams, inline in Jupyter, and a gallery page.

The gallery is opened in a real browser (Debian's chromium, driven by
Selenium); set ``ARTA_REQUIRE_BROWSER=1`` (CI does) to make a missing
browser a failure instead of a skip.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import arta
from arta.batch.gallery import GalleryEntry, write_gallery
from arta.emulator import Emulator

PNG = b"\x89PNG\r\n\x1a\n"


def test_an_image_reads_into_memory_and_streams(client: arta.Client) -> None:
    result = client.generate("a fox", n=2, seed=5)
    data = result.images[0].read()  # no transport given: one of its own
    assert data.startswith(PNG) and data.endswith(b"IEND\xaeB`\x82")
    assert result.read(1) == result.images[1].read(client.transport)
    with result.images[0].open(client.transport) as stream:
        assert stream.read(8) == PNG
        assert PNG + stream.read() == data


def test_reading_checks_the_bytes_as_saving_does(emulator: Emulator,
                                                 client: arta.Client) -> None:
    result = client.generate("a fox")
    with pytest.raises(arta.errors.DownloadError, match="larger than the 100-byte limit"):
        result.images[0].read(max_bytes=100)
    not_a_png = arta.Image(url=f"{emulator.url}/emulator/stats", name="x.png",
                           mime="image/png", blurred=False)
    with pytest.raises(arta.errors.DownloadError, match="not an image"):
        not_a_png.read()
    emulator.app.inject("image", "badjson", times=10)  # a PNG cut in half, every time
    with pytest.raises(arta.errors.ProtocolError, match="ended early") as caught:
        result.read(0)
    assert caught.value.record_id == result.record_id


def test_jupyter_shows_the_images_inline_fetched_when_shown(emulator: Emulator,
                                                           client: arta.Client) -> None:
    result = client.generate("a <fox>", n=2)
    downloads = emulator.stats()["downloads"]
    page = result._repr_html_()
    assert emulator.stats()["downloads"] == downloads + 2  # lazily: only when shown
    sources = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(s) for s in sources] == [result.read(0), result.read(1)]
    image = result.images[0]
    assert image._repr_png_() == result.read(0)
    bundle = image._repr_mimebundle_()
    assert "data:image/png;base64," in bundle["text/html"]
    emulator.app.inject("image", "500", times=10)
    assert "not shown" in image._repr_html_()  # a failed fetch is said, not raised
    assert image._repr_png_() is None


# -- the gallery --------------------------------------------------------------

HOSTILE = '<script>alert("x")</script> & "quotes"'


def _gallery(client: arta.Client, folder: Path) -> tuple[Path, int]:
    entries = []
    for prompt, seed in (("a fox", 1), ("a <b>bold</b> cat", 2)):
        result = client.generate(prompt, n=2, seed=seed)
        files = result.save(folder / "images")
        entries.append(GalleryEntry(prompt, style="Fantasy Art", seed=seed, record_id=result.record_id,
                                    files=[str(path.relative_to(folder)) for path in files]))
    elsewhere = client.generate("a far away owl").save(folder.parent / "elsewhere")
    entries.append(GalleryEntry("a far away owl", files=elsewhere))  # absolute paths
    entries.append(GalleryEntry(HOSTILE, style="Cyberpunk", seed=3, error=HOSTILE,
                                record_id="rec-1"))
    return write_gallery(folder, entries, title="my <batch>"), 5


def test_the_gallery_page_escapes_everything_and_uses_no_script(client: arta.Client,
                                                                tmp_path: Path) -> None:
    index, images = _gallery(client, tmp_path / "out")
    page = index.read_text()
    assert index == tmp_path / "out" / "index.html"
    assert "<script" not in page.lower() and page.count("<img ") == images
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "a &lt;b&gt;bold&lt;/b&gt; cat" in page and "<title>my &lt;batch&gt;</title>" in page
    assert 'href="images/' in page and "file://" in page  # relative inside, a URI outside
    assert "seed 2" in page and "Fantasy Art" in page and "rec-1" in page
    assert not list((tmp_path / "out").glob(".index-*"))


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless chromium through chromedriver (Debian's packages), offline."""
    chromium, driver = shutil.which("chromium") or "/usr/bin/chromium", "/usr/bin/chromedriver"
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        selenium_missing = True
    else:
        selenium_missing = False
    if selenium_missing or not (os.path.exists(chromium) and os.path.exists(driver)):
        why = "no selenium, or no chromium/chromedriver (apt-get install chromium chromium-driver)"
        if os.environ.get("ARTA_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ARTA_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--allow-file-access-from-files"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def test_the_gallery_opens_from_the_file_system_and_every_image_loads(
    client: arta.Client, tmp_path: Path, browser: object,
) -> None:
    index, images = _gallery(client, tmp_path / "out")
    browser.get(index.as_uri())  # type: ignore[attr-defined]
    loaded = browser.execute_script(  # type: ignore[attr-defined]
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
    assert len(loaded) == images
    assert all(complete and width > 0 for complete, width in loaded), loaded
    text = browser.find_element("tag name", "body").text  # type: ignore[attr-defined]
    assert HOSTILE in text  # shown as text, never run
    assert browser.title == "my <batch>"  # type: ignore[attr-defined]
