"""Upstream connections and pool, aggregated catalog, dispatcher meta-tools, argument validation."""
