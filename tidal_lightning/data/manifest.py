"""What a set of files looked like when a run (or a cache) was built from them.

A run over a folder of images numbers the files by sorted path; a label given for index 25
belongs to the file that was 25th *then*. The manifest pins that list (path, size, mtime) so
any later change to the folder is found and named before a label or a cached image is
attributed to the wrong file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

MAX_NAMED = 5  # files named per kind of change in a message; the rest are counted


@dataclass(frozen=True)
class Manifest:
    """Relative paths with their sizes and modification times (ns), in dataset order.

    Attributes:
        paths: relative POSIX paths, position = dataset index.
        sizes: `[N]` int64 file sizes in bytes.
        mtimes: `[N]` int64 modification times in nanoseconds.
    """

    paths: list[str]
    sizes: Tensor
    mtimes: Tensor

    @classmethod
    def scan(cls, root: Path, paths: Sequence[str]) -> Manifest:
        """Stats every `root / path` (one `os.stat` per file, no reading)."""
        stats = [os.stat(root / p) for p in paths]
        return cls(
            list(paths),
            torch.tensor([s.st_size for s in stats], dtype=torch.int64),
            torch.tensor([s.st_mtime_ns for s in stats], dtype=torch.int64),
        )

    def to_state(self) -> dict[str, object]:
        """Plain types and tensors, loadable with `torch.load(weights_only=True)`."""
        return {"paths": list(self.paths), "sizes": self.sizes, "mtimes": self.mtimes}

    @classmethod
    def from_state(cls, saved: dict[str, object]) -> Manifest:
        paths, sizes, mtimes = saved["paths"], saved["sizes"], saved["mtimes"]
        assert isinstance(paths, list)
        assert isinstance(sizes, Tensor) and isinstance(mtimes, Tensor)
        return cls([str(p) for p in paths], sizes, mtimes)

    def changes(self, now: Manifest) -> ManifestChanges:
        """What differs in `now` against this (the pinned) manifest."""
        before = {p: i for i, p in enumerate(self.paths)}
        after = {p: i for i, p in enumerate(now.paths)}
        changed = [
            p
            for p, i in before.items()
            if p in after
            and (
                int(self.sizes[i]) != int(now.sizes[after[p]])
                or int(self.mtimes[i]) != int(now.mtimes[after[p]])
            )
        ]
        return ManifestChanges(
            added=sorted(after.keys() - before.keys()),
            removed=sorted(before.keys() - after.keys()),
            changed=sorted(changed),
        )


@dataclass(frozen=True)
class ManifestChanges:
    """Files added, removed, or rewritten (size or mtime differ) since a manifest was taken."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        """One line per kind of change, naming up to `MAX_NAMED` files each."""
        lines = []
        for kind, files in (("added", self.added), ("removed", self.removed)):
            if files:
                lines.append(f"{len(files)} {kind}: {_named(files)}")
        if self.changed:
            lines.append(f"{len(self.changed)} rewritten (size or mtime): {_named(self.changed)}")
        return "; ".join(lines)


def _named(files: list[str]) -> str:
    shown = ", ".join(files[:MAX_NAMED])
    return shown + (f", ... ({len(files) - MAX_NAMED} more)" if len(files) > MAX_NAMED else "")
