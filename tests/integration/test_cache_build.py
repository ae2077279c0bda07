"""Cache builds across processes: a process pool, a SIGKILL mid-build and its resume, two
jobs building the same cache at once. Subprocesses that import torch: seconds each."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.test_cache import CountingDecoder, decoded, photos, source_of
from tidal_lightning.data import cache as cache_module
from tidal_lightning.data.cache import open_cache
from tidal_lightning.data.image_folder import read_image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_the_process_pool_build_equals_the_in_process_one(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "photos"
    photos(root, 9)
    monkeypatch.setattr(cache_module, "CHUNK_IMAGES", 2)  # 5 tasks over 2 worker processes
    pooled = open_cache(tmp_path / "pool", source_of(root), read_image, workers=2)
    assert torch.equal(pooled.read_all(), decoded(root))


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from tidal_lightning.data import cache
from tidal_lightning.data.image_folder import list_images, read_image
from tidal_lightning.data.manifest import Manifest

cache.CHUNK_IMAGES = 3
root, folder, die_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
seen = 0

def dying(path, channels, size):
    global seen
    seen += 1
    if seen == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return read_image(path, channels, size)

source = cache.CacheSource(root, Manifest.scan(root, list_images(root)), (3, 6, 5))
cache.open_cache(folder, source, dying, workers=0)
"""


def test_a_killed_build_resumes_with_the_chunks_it_lacks(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "photos"
    photos(root, 11)
    folder = tmp_path / "cache" / "c"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BUILD, str(root), str(folder), "8"],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    partial = folder.with_name("c.partial")
    # images 1-7 were decoded before the kill at the 8th: chunks [0, 3) and [3, 6) are done
    assert sorted(p.name for p in (partial / "done").iterdir()) == ["0-3", "3-6"]
    assert not folder.exists()
    monkeypatch.setattr(cache_module, "CHUNK_IMAGES", 3)
    CountingDecoder.calls = 0
    resumed = open_cache(folder, source_of(root), CountingDecoder.decode, workers=0)
    assert CountingDecoder.calls == 11 - 6
    assert torch.equal(resumed.read_all(), decoded(root))


HELD_BUILD = """
import logging, sys, time
from pathlib import Path
from tidal_lightning.data import cache
from tidal_lightning.data.image_folder import list_images, read_image
from tidal_lightning.data.manifest import Manifest

logging.basicConfig(level=logging.INFO, stream=sys.stdout)
root, folder, release = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
decoded = 0

def held(path, channels, size):
    global decoded
    decoded += 1
    while not release.exists():  # the test lets the build go on once the other job waits
        time.sleep(0.02)
    return read_image(path, channels, size)

source = cache.CacheSource(root, Manifest.scan(root, list_images(root)), (3, 6, 5))
built = cache.open_cache(folder, source, held, workers=0)
print("DECODED", decoded, int(built.read_all().sum()), flush=True)
"""


def test_concurrent_jobs_build_a_cache_once_the_others_wait_then_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subprocess builds, held mid-build; this process asks for the same cache meanwhile."""
    root = tmp_path / "photos"
    photos(root, 8)
    folder, release = tmp_path / "cache" / "c", tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-c", HELD_BUILD, str(root), str(folder), str(release)]
    builder = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, text=True)
    opened: dict[str, Any] = {}
    waiter = threading.Thread(
        target=lambda: opened.update(
            cache=open_cache(folder, source_of(root), CountingDecoder.decode, workers=0)
        )
    )
    try:
        deadline = time.monotonic() + 240
        while not folder.with_name("c.partial").exists():  # it builds, holding the lock
            assert time.monotonic() < deadline and builder.poll() is None
            time.sleep(0.05)
        CountingDecoder.calls = 0
        with caplog.at_level(logging.INFO, logger="tidal_lightning.data.cache"):
            waiter.start()
            while "waiting for another process building" not in caplog.text:
                assert time.monotonic() < deadline and waiter.is_alive()
                time.sleep(0.05)
            release.touch()  # the builder goes on; this process must then read its cache
            waiter.join(timeout=240)
        out, _ = builder.communicate(timeout=240)
    finally:
        release.touch()
        builder.kill()
    (report,) = [line.split() for line in out.splitlines() if "DECODED" in line]
    assert int(report[1]) == 8 and CountingDecoder.calls == 0  # built once, by the builder
    assert torch.equal(opened["cache"].read_all(), decoded(root))
    assert int(report[2]) == int(decoded(root).sum())
