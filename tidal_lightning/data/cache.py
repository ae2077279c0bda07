"""Decoded images on disk: a split decoded once into a uint8 array file, then read by index.

A cache is a folder `<cache_dir>/<name>/` holding

- `images.npy`: `[N, C, H, W]` uint8 in numpy's `.npy` format (`np.load(path, mmap_mode="r")`
  opens it too), sample `i` at a fixed byte offset;
- `source.pt`: what it was built from (the root folder, the `Manifest` of its files: paths in
  dataset order, sizes, mtimes; the image shape; the format version).

Reads use `os.preadv` into a preallocated (optionally pinned) batch, never a memory map: the
process holds only the batches it asked for, whatever the cache's size, so it runs under a
memory limit (`ulimit -v`, a cgroup) several times smaller than the cache, and the OS page
cache keeps whatever fits of it.

Building (`open_cache`) decodes the files chunk by chunk in a process pool into
`<name>.partial/`; every chunk written (and synced) is marked done in `done/`, so a killed
build resumes with the chunks it lacks. The finished folder is renamed to `<name>`
(atomic). An `fcntl` lock on `<name>.lock` makes concurrent jobs build a cache once: the first
builds, the others wait and then read it. A cache whose files changed since (added, removed,
rewritten: size or mtime) is refused with what changed, or rebuilt when asked to.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tidal_lightning.data.manifest import Manifest
from tidal_lightning.errors import TidalError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the layout changes: older caches then get another name
IMAGES_FILE = "images.npy"
SOURCE_FILE = "source.pt"
CHUNK_IMAGES = 256  # images per decoding task and done-marker
READ_ALL_BYTES = 64 * 2**20  # one read of `read_all`


def array_header(path: Path) -> tuple[tuple[int, ...], int]:
    """`(shape, byte offset of the data)` of a uint8 `.npy` file, read without mapping it."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, dtype = read_header(handle)
        if fortran_order or dtype != np.uint8:
            raise CacheError(f"{path} is not a C-ordered uint8 array; delete it to rebuild")
        return tuple(int(s) for s in shape), handle.tell()


def _pwrite_all(fd: int, data: np.ndarray, offset: int) -> None:
    """Writes all of `data` (C-contiguous) at `offset`, however many calls that takes."""
    view = data.data.cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class CacheError(TidalError):
    """A cache cannot be built or used as it stands."""


class StaleCacheError(CacheError):
    """The files a cache was built from changed since; it is never used silently."""


def cache_name(dataset: str, split: str, root: Path, shape: Sequence[int]) -> str:
    """Folder name of the cache of one split: one per (source folder, split, image shape).

    The file list is not part of the name but of the record inside, so a changed folder
    finds its old cache and is told what changed instead of silently building another.
    """
    channels, height, width = (int(s) for s in shape)
    identity = f"{Path(root).resolve()}|{split}|{channels}x{height}x{width}|v{CACHE_FORMAT}"
    digest = hashlib.blake2b(identity.encode(), digest_size=6).hexdigest()
    return f"{dataset}-{split}-{channels}x{height}x{width}-{digest}"


@dataclass(frozen=True)
class CacheSource:
    """What a cache holds: the files `manifest.paths` under `root`, decoded to `shape`.

    Attributes:
        root: the folder the paths are relative to.
        manifest: the files in dataset order, with their sizes and mtimes.
        shape: `(C, H, W)` of every decoded image.
    """

    root: Path
    manifest: Manifest
    shape: tuple[int, int, int]

    def to_state(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "root": str(Path(self.root).resolve()),
            "shape": list(self.shape),
            "manifest": self.manifest.to_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CacheSource:
        channels, height, width = (int(s) for s in state["shape"])
        return cls(
            Path(state["root"]), Manifest.from_state(state["manifest"]), (channels, height, width)
        )

    def differences(self, now: CacheSource) -> str:
        """'' when `now` describes the same files and shape; else what changed, in words."""
        if tuple(self.shape) != tuple(now.shape):
            return f"the image shape changed from {self.shape} to {now.shape}"
        changes = self.manifest.changes(now.manifest)
        if changes:
            return changes.describe()
        if self.manifest.paths != now.manifest.paths:
            return "the same files are listed in another order"
        return ""


# ----------------------------------------------------------------------------- reading
class ImageCache:
    """A complete cache, read by index with `os.preadv` (no memory map).

    Safe to read from several threads at once (`preadv` has no shared file offset).

    Args:
        folder: the cache folder (holding `images.npy` and `source.pt`).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / IMAGES_FILE
        shape, self.offset = array_header(self.path)
        self.shape: tuple[int, int, int, int] = shape  # type: ignore[assignment]
        self.sample_bytes = int(np.prod(self.shape[1:]))
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return len(self) * self.sample_bytes

    def source(self) -> CacheSource:
        return CacheSource.from_state(
            torch.load(self.folder / SOURCE_FILE, weights_only=True, map_location="cpu")
        )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:  # an open descriptor does not pickle
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])  # type: ignore[misc]

    def _read_rows(self, target: np.ndarray, first: int) -> None:
        """Fills `target` (`[n, C, H, W]`, C-contiguous) with samples `first ... first + n - 1`."""
        wanted = target.nbytes
        done = os.preadv(self._fd, [target.data], self.offset + first * self.sample_bytes)
        if done != wanted:  # a regular file returns short only at its end: truncated
            raise CacheError(
                f"{self.path} is shorter than its header says ({done} of {wanted} bytes at "
                f"sample {first}); delete {self.folder} and run again to rebuild it"
            )

    def read(self, indices: Tensor, pin_memory: bool = False) -> Tensor:
        """`[B, C, H, W]` uint8 samples at `indices` (`[B]` int64), in their order.

        Runs of consecutive indices are read with one call each (a pass over `arange` reads
        whole chunks); memory is the batch itself (plus one copy of it when the indices are
        not sorted).

        Args:
            indices: dataset indices; any order, repeats allowed.
            pin_memory: allocate the batch in page-locked memory, for an asynchronous copy
                to a CUDA device.
        """
        wanted = indices.detach().to("cpu", torch.int64).numpy()
        out = torch.empty((len(wanted), *self.shape[1:]), dtype=torch.uint8, pin_memory=pin_memory)
        if not len(wanted):
            return out
        if int(wanted.min()) < 0 or int(wanted.max()) >= len(self):
            raise IndexError(f"cache index out of range [0, {len(self)}) in {self.path}")
        order = np.argsort(wanted, kind="stable")
        in_order = bool((order == np.arange(len(order))).all())
        sorted_indices = wanted[order]
        target = out.numpy() if in_order else np.empty(out.shape, dtype=np.uint8)
        breaks = np.flatnonzero(np.diff(sorted_indices) != 1) + 1
        bounds = [0, *breaks.tolist(), len(sorted_indices)]
        for start, end in itertools.pairwise(bounds):
            self._read_rows(target[start:end], int(sorted_indices[start]))
        if not in_order:
            out.numpy()[order] = target
        return out

    def read_all(self, device: torch.device | str = "cpu") -> Tensor:
        """The whole split, `[N, C, H, W]` uint8 on `device`, read in 64 MB pieces.

        Host memory beyond the result is one piece (pinned, on the way to a CUDA device).
        """
        device = torch.device(device)
        out = torch.empty(self.shape, dtype=torch.uint8, device=device)
        rows = max(1, READ_ALL_BYTES // self.sample_bytes)
        for start in range(0, len(self), rows):
            end = min(start + rows, len(self))
            if device.type == "cpu":
                self._read_rows(out.numpy()[start:end], start)
            else:
                piece = torch.empty((end - start, *self.shape[1:]), dtype=torch.uint8)
                piece = piece.pin_memory() if device.type == "cuda" else piece
                self._read_rows(piece.numpy(), start)
                out[start:end].copy_(piece, non_blocking=device.type == "cuda")
        return out

    def as_tensor(self) -> Tensor:
        """The whole split as a memory-mapped `[N, C, H, W]` CPU tensor (copy-on-write).

        Touching it reads from disk through the page cache: for code that wants a tensor
        view of the cache (analyses, scripts), not for the training path.
        """
        return torch.from_numpy(np.load(self.path, mmap_mode="c"))


# ---------------------------------------------------------------------------- building
@contextmanager
def _locked(path: Path, shared: bool, waiting_message: str) -> Iterator[None]:
    """An `fcntl.flock` on `path`, logging once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(waiting_message)
            fcntl.flock(handle, mode)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _stale_message(folder: Path, why: str, key: str) -> str:
    return (
        f"the image cache {folder} no longer matches the files it was built from: {why}. "
        f"Rebuild it with {key}=true (or delete that folder), or restore the files."
    )


def open_cache(
    folder: Path,
    source: CacheSource,
    decode: Callable[[Path, int, tuple[int, int]], Tensor],
    *,
    rebuild: bool = False,
    workers: int | None = None,
    progress: bool = True,
    rebuild_key: str = "dataset.cache_rebuild",
) -> ImageCache:
    """The cache of `source` at `folder`, built first if needed (once, across processes).

    Args:
        folder: the cache folder (`<cache_dir>/<cache_name(...)>`).
        source: the files and shape it must hold.
        decode: `decode(path, channels, (H, W)) -> [C, H, W] uint8`; a module-level
            function (it runs in worker processes).
        rebuild: replace a cache whose files changed; False refuses it (`StaleCacheError`).
        workers: decoding processes; None: one per CPU core; 0: decode in this process.
        progress: show a progress bar while building.
        rebuild_key: the config key named in the refusal.

    Raises:
        StaleCacheError: the cache exists, its files changed, and `rebuild` is False.
    """
    folder = Path(folder)
    lock = folder.with_name(folder.name + ".lock")
    waiting = f"waiting for another process building the image cache {folder}"
    with _locked(lock, shared=True, waiting_message=waiting):
        found = _check_complete(folder, source, rebuild, rebuild_key)
        if found is not None:
            return found
    with _locked(lock, shared=False, waiting_message=waiting):
        found = _check_complete(folder, source, rebuild, rebuild_key)  # built meanwhile?
        if found is not None:
            return found
        if folder.exists():
            log.warning("rebuilding the image cache %s (%s=true)", folder, rebuild_key)
            _remove(folder)
        _build(folder, source, decode, workers, progress)
        return ImageCache(folder)


def _check_complete(
    folder: Path, source: CacheSource, rebuild: bool, rebuild_key: str
) -> ImageCache | None:
    """The cache at `folder` if complete and built from `source`; None if missing or to rebuild."""
    if not (folder / SOURCE_FILE).exists():
        return None
    cache = ImageCache(folder)
    why = cache.source().differences(source)
    if not why and cache.shape == (len(source.manifest.paths), *source.shape):
        return cache
    cache.close()
    if rebuild:
        return None
    raise StaleCacheError(_stale_message(folder, why or "its size differs", rebuild_key))


def _remove(folder: Path) -> None:
    """Removes `folder` by renaming it away first, so no one finds it half deleted."""
    doomed = folder.with_name(f"{folder.name}.removing-{os.getpid()}")
    folder.rename(doomed)
    shutil.rmtree(doomed)


def _chunks(count: int) -> list[tuple[int, int]]:
    return [(start, min(start + CHUNK_IMAGES, count)) for start in range(0, count, CHUNK_IMAGES)]


def _start_partial(partial: Path, source: CacheSource) -> bool:
    """Prepares `partial` for `source`; True when it resumes an earlier build of the same."""
    record = partial / SOURCE_FILE
    if record.exists() and (partial / IMAGES_FILE).exists():
        before = CacheSource.from_state(torch.load(record, weights_only=True))
        why = before.differences(source)
        if not why:
            return True
        log.warning("discarding the unfinished image cache %s: %s", partial, why)
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "done").mkdir(parents=True)
    _create_array(partial / IMAGES_FILE, (len(source.manifest.paths), *source.shape))
    torch.save(source.to_state(), record)
    return False


def _build(
    folder: Path,
    source: CacheSource,
    decode: Callable[[Path, int, tuple[int, int]], Tensor],
    workers: int | None,
    progress: bool,
) -> None:
    partial = folder.with_name(folder.name + ".partial")
    resumed = _start_partial(partial, source)
    paths = source.manifest.paths
    # A chunk is marked by its rows, so a resume with another chunk size redoes, never skips.
    todo = [(a, b) for a, b in _chunks(len(paths)) if not (partial / "done" / f"{a}-{b}").exists()]
    remaining = sum(b - a for a, b in todo)
    log.info(
        "%s the image cache %s: %d images of %s from %s (%d still to decode)",
        "resuming" if resumed else "building",
        folder,
        len(paths),
        "x".join(map(str, source.shape)),
        source.root,
        remaining,
    )
    started = time.perf_counter()
    tasks = [
        (str(partial / IMAGES_FILE), str(source.root), paths[a:b], a, source.shape, decode)
        for a, b in todo
    ]
    bar = tqdm(
        total=len(paths),
        initial=len(paths) - remaining,
        unit="img",
        desc=f"decoding {folder.name}",
        disable=None if progress else True,  # None: shown on a terminal only
    )
    with bar:
        for task_index, decoded in _run_tasks(tasks, workers):
            first, end = todo[task_index]
            (partial / "done" / f"{first}-{end}").touch()
            bar.update(decoded)
    _sync(partial / IMAGES_FILE)
    os.replace(partial, folder)
    seconds = time.perf_counter() - started
    log.info(
        "image cache %s ready: %d images decoded in %.1f s (%.0f images/s)",
        folder,
        remaining,
        seconds,
        remaining / max(seconds, 1e-9),
    )
    shutil.rmtree(folder / "done", ignore_errors=True)


def _run_tasks(tasks: list[tuple[Any, ...]], workers: int | None) -> Iterable[tuple[int, int]]:
    """`(task index, images decoded)` as the decoding tasks finish, in a pool or in-process."""
    if workers is None:
        workers = os.cpu_count() or 1
    if workers <= 0 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            yield index, _decode_chunk(*task)
        return
    # spawn: a forked child of a process that has run torch's thread pool can hang
    context = get_context("spawn")
    with ProcessPoolExecutor(
        min(workers, len(tasks)), mp_context=context, initializer=_single_threaded
    ) as pool:
        pending: dict[Future[int], int] = {}
        queue = list(enumerate(tasks))
        queue.reverse()
        limit = 2 * min(workers, len(tasks))  # bounded: 437k paths need not all be pickled now
        while queue or pending:
            while queue and len(pending) < limit:
                index, task = queue.pop()
                pending[pool.submit(_decode_chunk, *task)] = index
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                yield pending.pop(future), future.result()


def _single_threaded() -> None:
    torch.set_num_threads(1)  # the pool's processes share the cores


def _decode_chunk(
    array_path: str,
    root: str,
    paths: Sequence[str],
    start: int,
    shape: tuple[int, int, int],
    decode: Callable[[Path, int, tuple[int, int]], Tensor],
) -> int:
    """Decodes `paths` into rows `start ...` of the array file and syncs them; returns the count."""
    channels, height, width = shape
    rows = np.empty((len(paths), *shape), dtype=np.uint8)
    for position, path in enumerate(paths):
        rows[position] = decode(Path(root) / path, channels, (height, width)).numpy()
    _, header_offset = array_header(Path(array_path))
    fd = os.open(array_path, os.O_WRONLY)
    try:
        _pwrite_all(fd, rows, header_offset + start * rows[0].nbytes)
        os.fdatasync(fd)  # on disk before the chunk is marked done: a crash cannot lose it
    finally:
        os.close(fd)
    return len(paths)


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_cache(
    folder: Path, source: CacheSource, count: int, chunks: Iterable[Tensor]
) -> ImageCache:
    """A cache written from `[n, C, H, W]` uint8 chunks in memory (benchmarks, tests).

    The chunks are written as they come (one in memory at a time) and must add up to
    `count` rows; `source.manifest` may list no files (generated data). Replaces whatever
    is at `folder`.
    """
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _create_array(partial / IMAGES_FILE, (count, *source.shape))
    _, position = array_header(partial / IMAGES_FILE)
    end = position + count * int(np.prod(source.shape))
    fd = os.open(partial / IMAGES_FILE, os.O_WRONLY)
    try:
        for chunk in chunks:
            data = chunk.contiguous().numpy()
            _pwrite_all(fd, data, position)
            position += data.nbytes
    finally:
        os.close(fd)
    if position != end:
        raise ValueError(f"write_cache: the chunks hold {position} bytes, {end} were declared")
    torch.save(source.to_state(), partial / SOURCE_FILE)
    if folder.exists():
        _remove(folder)
    os.replace(partial, folder)
    return ImageCache(folder)


def _create_array(path: Path, shape: tuple[int, ...]) -> None:
    """A `.npy` file of `shape` uint8, its header written and its size set (rows read as 0)."""
    with open(path, "wb") as handle:
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.truncate(handle.tell() + int(np.prod(shape)))
