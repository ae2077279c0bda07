"""CoreSet as the TiDAL code names it: the greedy k-center, `strategies/kcenter_greedy.py`.

Its own module because a run names its strategy after the module (`strategy_name` in
run_summary.json, the report's rows): `strategy=coreset` runs stay `coreset`.
"""

from __future__ import annotations

from tidal_lightning.strategies.kcenter_greedy import KCenterGreedy


class CoreSet(KCenterGreedy):
    """The greedy k-center (Sener & Savarese 2018) under the TiDAL code's name."""
