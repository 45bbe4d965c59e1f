"""The languages utter's contract names: ten languages plus "Auto", matched case-insensitively."""

from __future__ import annotations

# The order utter lists them in its 400 message and on /languages.
LANGUAGES = [
    "Auto",
    "Chinese",
    "English",
    "Japanese",
    "Korean",
    "German",
    "French",
    "Russian",
    "Portuguese",
    "Spanish",
    "Italian",
]
DEFAULT_LANGUAGE = "Auto"  # what /languages reports as default (and what our HTTP routes assume)
METHOD_DEFAULT_LANGUAGE = "English"  # the plan's default for the Modal methods clone / design

_BY_LOWER = {name.lower(): name for name in LANGUAGES}


def unsupported_message(language: object, listed: bool = True) -> str:
    """utter's exact 400 message for a language it does not know (/clone-batch's lists no names)."""
    head = f"Unsupported language: {language}"
    return f"{head}. Supported: {', '.join(LANGUAGES)}" if listed else head


def normalize_language(language: object) -> str | None:
    """The model's language id ("auto", "english", ...) for a contract name, or None when unknown."""
    if not isinstance(language, str):
        return None
    name = _BY_LOWER.get(language.strip().lower())
    return None if name is None else name.lower()
