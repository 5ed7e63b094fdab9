"""Which wandb mode a run (or a plot reading wandb) gets: online only with an API key and a
server that answers within seconds; otherwise offline files for `wandb sync`. `WANDB_MODE`
in the environment wins."""

from __future__ import annotations

import os
import urllib.request


def resolve_mode(requested: str, timeout: float = 10.0) -> str:
    """online only with an API key and a server that answers; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = os.path.expanduser("~/.netrc")
        has_key = os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()
    if not has_key:
        return "offline"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        urllib.request.urlopen(base, timeout=timeout)
        return "online"
    except Exception:  # noqa: BLE001 - any failure to reach the server means offline
        return "offline"
