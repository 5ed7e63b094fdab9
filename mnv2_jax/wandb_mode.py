"""Which wandb mode a run (or a plot reading wandb) gets: online only with an API key and a
server that answers within seconds; otherwise offline files for `wandb sync`. `WANDB_MODE`
in the environment wins.

A key is `WANDB_API_KEY`, or the ~/.netrc entry that `wandb login` writes for the server's host
(api.wandb.ai, or the host of a self-hosted server in `WANDB_BASE_URL`).
"""

from __future__ import annotations

import netrc
import os
import urllib.error
import urllib.parse
import urllib.request


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def key_source(url: str | None = None) -> str | None:
    """Where an API key for the server at `url` comes from (`WANDB_API_KEY` or a netrc file), or None."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    host = urllib.parse.urlsplit(url or base_url()).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host) if host and os.path.exists(path) else None
    except (OSError, netrc.NetrcParseError):
        return None
    return path if entry and entry[2] else None


def decide(requested: str, timeout: float = 5.0) -> tuple[str, str]:
    """`(mode, why)`: `auto` is online only with an API key and a server that answers, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE is set"
    if requested != "auto":
        return requested, f"config wandb.mode={requested!r}"
    url = base_url()
    if key_source(url) is None:
        host = urllib.parse.urlsplit(url).hostname
        return "offline", f"no API key (WANDB_API_KEY, or a ~/.netrc entry for {host} from `wandb login`)"
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered (with an error status): it is there
    except Exception as e:  # noqa: BLE001 - any failure to reach the server means offline
        reason = getattr(e, "reason", e)
        return "offline", f"{url} does not answer ({type(reason).__name__}: {reason})"
    return "online", f"{url} answers"


def resolve_mode(requested: str, timeout: float = 5.0) -> str:
    """online only with an API key and a server that answers; else offline."""
    return decide(requested, timeout)[0]
