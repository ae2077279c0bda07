"""The active-learning orchestrator and the labeled/pool bookkeeping."""
