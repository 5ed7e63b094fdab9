"""Before TFDS downloads a dataset: check, in seconds, that its download host answers.

Without a network (or behind a proxy that does not answer) TFDS's downloader retries each URL
for minutes and then fails with pages of chained tracebacks. `check_reachable` asks each
download host once, the way TFDS's downloader will (`requests`, honouring HTTP(S)_PROXY and
NO_PROXY), bounded by `PROBE_SECONDS` including name resolution, and raises
`DownloadUnavailable` -- a ValueError the command line prints as a few lines -- naming the URL
and the two ways out: build the dataset on a machine with a network and copy it here, or point
`--config.data_dir` at a copy.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Iterable

# The whole check's time limit: name resolution, connection and the first answer of every host.
PROBE_SECONDS = 10.0


class DownloadUnavailable(ValueError):
    """A dataset needs a download and its host cannot be reached."""


def _reason(error: BaseException) -> str:
    """A short account of why a request failed (requests' own messages run to several lines)."""
    import requests

    text = str(error)
    if isinstance(error, requests.exceptions.ProxyError):
        return "the proxy does not answer"
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time"
    if "resolve" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "its host name does not resolve; no network?"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "connection failed"
    return type(error).__name__


def _probe(url: str, timeout: float) -> str | None:
    """None if the host of `url` answers an HTTP HEAD (any status), else the reason it does not."""
    import requests

    try:
        requests.head(url, timeout=timeout, allow_redirects=False).close()
    except requests.exceptions.RequestException as error:
        return _reason(error)
    return None


def first_unreachable(urls: Iterable[str], timeout: float = PROBE_SECONDS) -> tuple[str, str] | None:
    """`(url, reason)` for the first URL (one per host, HTTP(S) only) whose host does not answer
    within `timeout` seconds in all, or None when every host answers."""
    by_host: dict[str, str] = {}
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("http", "https"):
            by_host.setdefault(f"{parts.scheme}://{parts.netloc}", url)
    if not by_host:
        return None
    results: dict[str, str | None] = {}

    def run(url: str) -> None:
        results[url] = _probe(url, timeout)

    # Threads bound the wait: a stalled name lookup ignores requests' timeout.
    threads = [threading.Thread(target=run, args=(url,), daemon=True) for url in by_host.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)  # all run at once, so the total stays near `timeout`
    for url in by_host.values():
        if url not in results:
            return url, f"no answer within {timeout:g} s"
        if results[url] is not None:
            return url, results[url]
    return None


def unavailable_message(name: str, url: str, reason: str, data_dir_root: str) -> str:
    """What could not be fetched, from where, and the two ways out (at most a few lines)."""
    here = os.path.join(data_dir_root, name)
    return (
        f"cannot download dataset {name!r}: {url} is unreachable ({reason}).\n"
        "Either build it on a machine with a network and copy it here:\n"
        f"  tfds build {name} --data_dir DIR   then copy DIR/{name} to {here}\n"
        "or train from a data dir that holds it already:\n"
        f"  --config.data_dir=DIR   (DIR/{name} prepared by tfds build)"
    )


def check_reachable(builder, timeout: float = PROBE_SECONDS) -> None:
    """Raise DownloadUnavailable if a download host of the TFDS `builder` does not answer.

    Builders that list no URLs (manual downloads, generated data) pass unchecked.
    """
    urls = list(getattr(builder, "url_infos", None) or {})
    failed = first_unreachable(urls, timeout)
    if failed is not None:
        url, reason = failed
        raise DownloadUnavailable(
            unavailable_message(builder.name, url, reason, os.fspath(builder.data_dir_root))
        )
