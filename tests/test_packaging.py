"""What a package is expected to carry, checked on the installed metadata and the files."""

from __future__ import annotations

import configparser
import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_license_file_matches_the_declared_license() -> None:
    meta = importlib.metadata.metadata("arta")
    assert meta["License"] == "MIT"
    assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_every_supported_python_is_declared_and_has_a_tox_env() -> None:
    classifiers = importlib.metadata.metadata("arta").get_all("Classifier")
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
