"""`python -m tidal_lightning.predict checkpoint=PATH images=FOLDER_OR_FILE [key=value ...]`.

Predicts classes for new images with a run's `checkpoints/cycle_<k>.pt`, which loads with
`weights_only=True`. Images are resized and normalised as in training. Writes a CSV
`path,predicted_label,confidence,prob_<class>...` (paths relative to a folder given as
`images`), atomically.

Keys: checkpoint (required), images (required), out (predictions.csv), batch_size (256),
device (auto | cpu | cuda | cuda:N).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from tidal_lightning.al.records import atomic_write_text, csv_text
from tidal_lightning.checkpoints import build_backbone, load_checkpoint
from tidal_lightning.data.datamodules import normalize_uint8, uint8_scale_stats
from tidal_lightning.data.image_folder import IMAGE_SUFFIXES, list_images, read_images
from tidal_lightning.errors import ConfigError, TidalError

DEFAULTS: dict[str, str | None] = {
    "checkpoint": None,
    "images": None,
    "out": "predictions.csv",
    "batch_size": "256",
    "device": "auto",
}
USAGE = (
    "usage: python -m tidal_lightning.predict checkpoint=<run>/checkpoints/cycle_<k>.pt "
    "images=<folder or file> [out=predictions.csv] [batch_size=256] [device=auto]"
)


def parse_args(argv: list[str]) -> dict[str, Any]:
    """`key=value` arguments -> settings; unknown keys, repeats and missing ones are errors."""
    given: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"unknown argument {arg!r}; the keys are {list(DEFAULTS)}\n{USAGE}")
        if key in given:
            raise ConfigError(f"{key} is given twice\n{USAGE}")
        given[key] = value
    settings = {**DEFAULTS, **given}
    missing = [k for k, v in settings.items() if not v]
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be given\n{USAGE}")
    try:
        batch_size = int(str(settings["batch_size"]))
    except ValueError:
        batch_size = 0
    if batch_size < 1:
        raise ConfigError(f"batch_size={settings['batch_size']}: must be a whole number >= 1")
    device = str(settings["device"])
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"device={settings['device']}: {error}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={settings['device']}: no CUDA device here; use device=cpu")
    return {
        "checkpoint": Path(str(settings["checkpoint"])),
        "images": Path(str(settings["images"])),
        "out": Path(str(settings["out"])),
        "batch_size": batch_size,
        "device": resolved,
    }


def image_files(images: Path) -> tuple[list[Path], list[str]]:
    """The files to predict and the names the CSV gives them (relative to a folder)."""
    if images.is_dir():
        names = list_images(images)
        if not names:
            raise ConfigError(
                f"images={images} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return [images / n for n in names], names
    if images.is_file():
        return [images], [str(images)]
    raise ConfigError(f"images={images}: no such file or folder")


@torch.inference_mode()
def predict(
    checkpoint_path: Path, images: Path, batch_size: int = 256, device: torch.device | None = None
) -> tuple[list[str], list[str], torch.Tensor]:
    """Class names, image names and `[N, K]` softmax probabilities for the images.

    Images are decoded a batch at a time, so a folder of any size fits in memory.
    """
    device = device or torch.device("cpu")
    checkpoint = load_checkpoint(checkpoint_path)
    backbone = build_backbone(checkpoint).to(device)
    size = (int(checkpoint["image_size"][0]), int(checkpoint["image_size"][1]))
    channels = int(checkpoint["in_channels"])
    mean, std = uint8_scale_stats(checkpoint["mean"], checkpoint["std"], device)
    files, names = image_files(images)
    probs = []
    for start in range(0, len(files), batch_size):
        batch = read_images(files[start : start + batch_size], channels, size).to(device)
        logits, _ = backbone(normalize_uint8(batch, mean, std))
        probs.append(logits.float().softmax(dim=1).cpu())
    return list(checkpoint["classes"]), names, torch.cat(probs)


def write_predictions(out: Path, classes: list[str], names: list[str], probs: torch.Tensor) -> None:
    """`path,predicted_label,confidence,prob_<class>...`, one row per image, written atomically."""
    confidence, predicted = probs.max(dim=1)
    header = ["path", "predicted_label", "confidence", *(f"prob_{c}" for c in classes)]
    rows = [
        [name, classes[label], f"{conf:.6f}", *(f"{p:.6f}" for p in row)]
        for name, label, conf, row in zip(
            names, predicted.tolist(), confidence.tolist(), probs.tolist(), strict=True
        )
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, csv_text(header, rows))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(f"{USAGE}\n\n{__doc__}")
        return
    try:
        settings = parse_args(argv)
        classes, names, probs = predict(
            settings["checkpoint"], settings["images"], settings["batch_size"], settings["device"]
        )
        write_predictions(settings["out"], classes, names, probs)
    except TidalError as error:
        sys.exit(f"error: {error}")
    print(f"wrote predictions for {len(names)} images to {settings['out']}")


if __name__ == "__main__":
    main()
