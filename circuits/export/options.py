"""What a circuit picture shows (``pictures.layout``): one value, with the defaults the command
line and the demo take from it. Imports only the config base, so building the command line's
flags from it costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from circuits.core.config import Config
from circuits.core.errors import CircuitsError


@dataclass(frozen=True)
class PictureOptions(Config):
    """``max_nodes``: latents drawn at most, handed out one per site in turn (strongest sites
    first); ``per_site``: latents drawn at most in one site; ``min_edge``: site edges weaker
    than this share of the strongest are left out (unless one is a site's only path to the
    metric)."""

    label: ClassVar[str] = "picture options"

    max_nodes: int = 40
    per_site: int = 4
    min_edge: float = 0.05

    def validate(self) -> None:
        for name in ("max_nodes", "per_site", "min_edge"):
            value = getattr(self, name)
            if value < 0:
                raise CircuitsError(f"{self.label}: {name} must be at least 0, got {value}")
