"""The one place that removes secrets from text: every log line and every error body passes here."""

from __future__ import annotations

import re

# (pattern, replacement, what a text must contain, lowercased, for the pattern to match it)
_PATTERNS = [
    # conda's token form, however the path is spelled (//t/, /T/, percent-encoded slashes aside)
    (re.compile(r"(?i)(/+t/)[^/\s?#\"'<>]+"), r"\1***", ("/t/",)),
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:\"'<>]*:[^/@\s\"'<>]*@"), r"\1***:***@", ("://",)),
    # header values written into text
    # (a secret-like value: 8+ characters with a digit or a base64 sign, so that prose is left alone)
    (
        re.compile(r"(?i)\b(bearer|basic|token)(\s+)(?=[A-Za-z._~:-]*[0-9+/=])[A-Za-z0-9._~+/=:-]{8,}"),
        r"\1\2***",
        ("bearer", "basic", "token"),
    ),
    (
        re.compile(r"(?i)\b(x-api-?key|authorization|cookie)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;]+"),
        r"\1\2***",
        ("x-api", "authorization", "cookie"),
    ),
    # query parameters that carry secrets
    (re.compile(r"(?i)([?&](?:api_?key|token|password|key|session)=)[^&\s\"'#]+"), r"\1***", ("=",)),
    # condagate's own key shapes, wherever they appear
    (re.compile(r"\bcg[-_][A-Za-z0-9_-]{16,}"), "cg-***", ("cg-", "cg_")),
]


def redact(text: str) -> str:
    if not text.isascii():
        # re's case-insensitive matching maps a few non-ASCII letters (K, ſ, ı, İ) to ASCII ones: no shortcut
        for pattern, replacement, _ in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text
    # Most lines (every access-log line) contain none of the literals a pattern needs: a substring test
    # each, instead of six regular expression scans.
    lowered = text.lower()
    for pattern, replacement, needles in _PATTERNS:
        if any(needle in lowered for needle in needles):
            replaced = pattern.sub(replacement, text)
            if replaced != text:
                text, lowered = replaced, replaced.lower()
    return text
