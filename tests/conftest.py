"""Shared fixtures: the local HTTP mirror every download test talks to, and the real dataset samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcorpus.demo.localmirror import LocalMirror
from mmcorpus.registry import Registry


@pytest.fixture
def mirror(tmp_path_factory):
    """A real HTTP server on 127.0.0.1 serving a fresh folder; script faults with mirror.add(path, Route(...))."""
    folder = tmp_path_factory.mktemp("mirror")
    with LocalMirror(folder) as server:
        yield server


@pytest.fixture
def other_host_mirror(tmp_path_factory):
    """A second server reached under another host name (localhost, not 127.0.0.1): for cross-host redirects."""
    folder = tmp_path_factory.mktemp("other-mirror")
    with LocalMirror(folder) as server:
        server.host_url = f"http://localhost:{server.port}"
        yield server


@pytest.fixture
def root(tmp_path) -> Path:
    """An empty mmcorpus data root."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def registry() -> Registry:
    """The built-in registry (the specs under configs/), as `mmcorpus` loads it without --config-dir."""
    return Registry.load()
