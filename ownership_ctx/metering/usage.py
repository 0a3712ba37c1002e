"""One usage shape for every provider.

``input_tokens`` always INCLUDES cache reads and writes and ``output_tokens`` always includes
reasoning, whatever the provider's own convention (Anthropic and Bedrock report input without
cache; OpenAI and Gemini with it). Sub-counts are ``None`` when the provider did not say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_TOKENS", "Usage", "count", "usage_from_mapping"]

#: Above this a token count is not believed (no single call reads a trillion tokens).
MAX_TOKENS: Final = 10**12


@dataclasses.dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    input_audio_tokens: int | None = None
    output_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    output_image_tokens: int | None = None
    cache_audio_read_tokens: int | None = None

    def check(self, problems: list[str]) -> bool:
        """Consistency checks a payload can fail; appends problems, True when usable."""
        ok = True
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            problems.append("usage_inconsistent:cache_exceeds_input")
            ok = False
        if self.reasoning_tokens is not None and self.reasoning_tokens > self.output_tokens:
            problems.append("usage_inconsistent:reasoning_exceeds_output")
            ok = False
        split = (self.cache_write_5m_tokens or 0) + (self.cache_write_1h_tokens or 0)
        if split > self.cache_write_tokens:
            problems.append("usage_inconsistent:cache_split_exceeds_writes")
            ok = False
        return ok

    def as_dict(self) -> dict[str, int | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def count(value: Any, name: str, problems: list[str]) -> int | None:
    """A token count from a payload value; ``None`` (and a problem) for anything not believable.

    Absent (``None``) is not a problem: providers omit fields they have nothing to say about.
    """
    if value is None:
        return None
    if type(value) is int:
        if 0 <= value <= MAX_TOKENS:
            return value
        problems.append(f"usage_invalid:{name}:{'negative' if value < 0 else 'too_large'}")
        return None
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    problems.append(f"usage_invalid:{name}:not_a_count")
    return None


_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Usage))


def usage_from_mapping(values: Mapping[str, Any], problems: list[str]) -> Usage | None:
    """A `Usage` from a mapping with our field names (the manual API). Unknown keys are problems.

    Returns ``None`` when a count is not believable, so the caller records the call unpriced.
    """
    out = Usage()
    ok = True
    for key, raw in values.items():
        if key not in _FIELDS:
            problems.append(f"usage_unknown_key:{str(key)[:40]}")
            continue
        value = count(raw, key, problems)
        if value is None:
            ok = ok and raw is None
            continue
        setattr(out, key, value)
    if not ok or not out.check(problems):
        return None
    return out
