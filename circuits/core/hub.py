"""Hugging Face hub access that fails fast offline (huggingface_hub would retry for ~25 s)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub endpoint; False when HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str, filename: str = "config.json") -> Path | None:
    """The snapshot folder of ``repo_id``'s main revision in the local Hugging Face cache
    (``$HF_HUB_CACHE``, read when called) when it holds ``filename``, else None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    return Path(path).parent if isinstance(path, str) else None


def in_hf_cache(repo_id: str, filename: str = "config.json") -> bool:
    """Whether ``filename`` of ``repo_id`` is in the local Hugging Face cache."""
    return cached_snapshot(repo_id, filename) is not None


@contextmanager
def offline() -> Iterator[None]:
    """Make huggingface_hub use only its local cache inside the block."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
