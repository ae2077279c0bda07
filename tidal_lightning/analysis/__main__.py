"""`python -m tidal_lightning.analysis <name> [overrides...] [analysis.<key>=<value>...]`."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from tidal_lightning.analysis import ANALYSES, common
from tidal_lightning.analysis.common import AnalysisError, Request
from tidal_lightning.errors import TidalError

USAGE = "usage: python -m tidal_lightning.analysis {%s} [overrides...] [analysis.<key>=<value>...]"


def load(name: str) -> ModuleType:
    """The module that implements analysis `name` (one module per analysis)."""
    if name not in ANALYSES:
        raise AnalysisError(f"no analysis {name!r}; choose one of {', '.join(ANALYSES)}")
    return importlib.import_module(f"tidal_lightning.analysis.{name}")


def help_text() -> str:
    lines = [USAGE % ",".join(ANALYSES), ""]
    lines += [
        "Composes the config as `python -m tidal_lightning <overrides>` does (e.g.",
        "+experiment=fashion_mnist_cpu dataset.imbalance_ratio=100 seed=1) and writes <name>.png",
        "and <name>.json into outputs/analysis/<name>/<sorted overrides> (or paths.output_dir=).",
        "",
        "analyses and their own settings (analysis.<key>=<value>, defaults shown):",
    ]
    for name in ANALYSES:
        module = load(name)
        lines.append(f"  {name}: {module.SUMMARY}")
        lines += common.options_help(module.Options)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help"):
        print(help_text())
        if not arguments:
            sys.exit("error: name an analysis")
        return
    # The loop reports its progress through logging.
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        module = load(arguments[0])
        # After the import: Lightning sets its loggers' level when it is imported, and its
        # device banner is noise here.
        for noisy in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        request = Request.parse(arguments[0], arguments[1:])
        options = common.parse_options(module.Options, request.knobs, request.name)
        defaults = [
            o for o in getattr(module, "DEFAULT_OVERRIDES", ()) if not request.sets(o.split("=")[0])
        ]
        cfg = common.compose(request, defaults)
        out_dir = Path(cfg.paths.output_dir)
        result = module.run(cfg, options, request, out_dir)
    except TidalError as error:
        sys.exit(f"error: {error}")
    print(module.report(result))
    for suffix in ("png", "json"):
        print(f"wrote {out_dir / f'{request.name}.{suffix}'}")


if __name__ == "__main__":
    main()
