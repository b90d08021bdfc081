"""What a package is expected to carry, checked on the installed metadata and the files."""

from __future__ import annotations

import configparser
import importlib.metadata
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: ``arta`` on the package index is another project: this one is ``arta-client``.
DISTRIBUTION = "arta-client"


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_the_distribution_has_a_name_of_its_own_and_keeps_import_and_command() -> None:
    config = _setup_cfg()
    assert config["metadata"]["name"] == DISTRIBUTION
    assert config["options.packages.find"]["include"].split(", ") == ["arta", "arta.*"]
    assert "arta = arta.cli:main" in config["options.entry_points"]["console_scripts"]


def test_every_install_line_names_the_distribution() -> None:
    """``pip install arta`` or ``'arta[httpx]'`` would install the other project."""
    texts = [ROOT / "README.rst", *(ROOT / "docs").rglob("*.rst"), *(ROOT / "arta").rglob("*.py")]
    install = re.compile(r"pip install\s+(?:-\S+\s+)*['\"]?([\w.-]+)")
    named = 0
    for path in texts:
        for match in install.finditer(path.read_text()):
            if match.group(1) in ("arta", "arta-client"):
                named += 1
                assert match.group(1) == DISTRIBUTION, (path, match.group(0))
    assert named >= 5


def test_the_license_file_matches_the_declared_license() -> None:
    meta = importlib.metadata.metadata(DISTRIBUTION)
    assert meta["License"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_supported_python_is_declared_and_has_a_tox_env() -> None:
    classifiers = importlib.metadata.metadata(DISTRIBUTION).get_all("Classifier")
    tox = configparser.ConfigParser()
    tox.read(ROOT / "tox.ini")
    envs = {env.strip() for env in tox["tox"]["envlist"].split(",")}
    for minor in range(9, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
        assert f"py3{minor}" in envs
    assert tox["tox"]["skip_missing_interpreters"] == "true"


def test_the_changelog_has_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.rst").read_text()
    assert "\nUnreleased\n==========\n" in text and "GenerationInterrupted" in text


def test_the_pytest_plugin_is_registered() -> None:
    found = importlib.metadata.entry_points()
    plugins = (found.select(group="pytest11") if hasattr(found, "select")  # 3.10+
               else found.get("pytest11", []))
    assert [p.value for p in plugins if p.name == "arta"] == ["arta.pytest_plugin"]
