"""Search protocols, by name: one module each, one line here to register a new one."""

from __future__ import annotations

from tunepilot.search.protocols.base import Ask, Protocol
from tunepilot.search.protocols.bayes import Bayes
from tunepilot.search.protocols.rank_early import RankEarly
from tunepilot.search.protocols.staged import Staged

PROTOCOLS: dict[str, type[Protocol]] = {
    "bayes": Bayes,
    "staged": Staged,
    "rank_early": RankEarly,
}

__all__ = ["PROTOCOLS", "Ask", "Protocol", "Bayes", "Staged", "RankEarly"]
