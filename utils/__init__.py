"""Upstream client, SSE relay, router client, logging and metrics."""
