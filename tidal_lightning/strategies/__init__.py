"""Query strategies. One interface: score the pool, higher = query first."""
