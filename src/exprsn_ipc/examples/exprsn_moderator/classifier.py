"""A deterministic, rule-based content classifier (no model, no network).

The same text always gets the same verdict. Rules, first match wins:

1. **Too long**: more than 5,000 characters → rejected (``approved=False``, ``flagged=True``).
2. **Blocked terms**: a phrase from :data:`BLOCKED_TERMS` (whole words, case-insensitive,
   after undoing common digit/symbol substitutions such as ``fr33 m0ney``) →
   rejected, with the term's category (``threat``, ``scam``, ``spam``, ``abuse``).
3. **Link spam**: more than :data:`MAX_LINKS` links → rejected (``spam``).
4. **Shouting**: at least 20 letters, 80 % or more of them capitals → approved but
   flagged for review (``shouting``).
5. **Repetition**: one character repeated 10 or more times in a row → approved but
   flagged for review (``repetition``).
6. Otherwise approved and not flagged (``clean``).

``confidence`` is fixed per rule (it says how sure the rule is, not a model score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["BLOCKED_TERMS", "MAX_LENGTH", "MAX_LINKS", "Verdict", "classify"]

MAX_LENGTH: Final = 5000
MAX_LINKS: Final = 3

#: Blocked phrases by category, lower case.
BLOCKED_TERMS: Final[dict[str, tuple[str, ...]]] = {
    "threat": ("kill you", "hurt you", "i will find you"),
    "scam": ("send bitcoin", "wire transfer", "gift card code", "verify your account", "crypto giveaway"),
    "spam": ("buy now", "free money", "click here", "limited offer", "work from home"),
    "abuse": ("idiot", "moron", "loser", "shut up"),
}

_SUBSTITUTIONS: Final = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "$": "s", "@": "a"})
_LINK: Final = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_REPEAT: Final = re.compile(r"(\S)\1{9,}")
_TERMS: Final = [
    (category, term, re.compile(rf"\b{re.escape(term)}\b"))
    for category, terms in BLOCKED_TERMS.items()
    for term in terms
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The classifier's answer; :meth:`result` is the ``content:moderated`` ``result`` object."""

    approved: bool
    flagged: bool
    reason: str
    confidence: float
    categories: list[str] = field(default_factory=list)

    def result(self) -> dict[str, Any]:
        return {"approved": self.approved, "flagged": self.flagged, "reason": self.reason}


def _normalise(text: str) -> str:
    words = []
    for word in text.lower().split():
        # Undo substitutions only inside words that also contain letters ("fr33", not "2024").
        words.append(word.translate(_SUBSTITUTIONS) if any(c.isalpha() for c in word) else word)
    return " ".join(words)


def classify(content: str) -> Verdict:
    """Classify ``content`` by the module's rules."""
    if len(content) > MAX_LENGTH:
        return Verdict(False, True, f"too long ({len(content)} > {MAX_LENGTH} characters)", 1.0, ["length"])
    normalised = _normalise(content)
    for category, term, pattern in _TERMS:
        if pattern.search(normalised):
            return Verdict(False, True, f"blocked term '{term}' ({category})", 0.95, [category])
    links = len(_LINK.findall(content))
    if links > MAX_LINKS:
        return Verdict(False, True, f"too many links ({links} > {MAX_LINKS})", 0.8, ["spam"])
    letters = [c for c in content if c.isalpha()]
    if len(letters) >= 20 and sum(c.isupper() for c in letters) >= 0.8 * len(letters):
        return Verdict(True, True, "excessive capitals", 0.6, ["shouting"])
    if _REPEAT.search(content):
        return Verdict(True, True, "repeated characters", 0.6, ["repetition"])
    return Verdict(True, False, "clean", 0.99, [])
