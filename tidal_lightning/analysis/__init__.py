"""The papers' analyses as commands: `python -m tidal_lightning.analysis <name> [overrides...]`.

- `td_separation`: TiDAL §3.1 / Fig. 2, snapshot vs TD uncertainty at telling minority from
  majority classes (KDEs and AUROCs) on a long-tailed training pool.
- `td_prediction`: TiDAL §5.4, KL and rank correlation of the TD module's prediction against
  the recorded TD of the pool, per AL cycle.
- `informativeness`: dispersion paper §3.2, the model's accuracy on the top x % each strategy
  would query.

Each composes the normal config (the same overrides as `python -m tidal_lightning`), writes
`<name>.png` and `<name>.json` into `outputs/analysis/<name>/<sorted overrides>` (or
`paths.output_dir=...`), and prints its headline numbers. An analysis's own settings are
`analysis.<key>=<value>` (see `--help`).
"""

ANALYSES = ("td_separation", "td_prediction", "informativeness")
