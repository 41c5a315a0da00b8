"""Credentials in URLs, the one home for hiding them: anything logged, raised or written to a run folder
passes through ``mask_url`` first. Lives at the bottom layer so every package (deblur's remote data,
the pipeline's stream sources) can use it."""

from __future__ import annotations

import re

__all__ = ["mask_url"]

# userinfo: everything from the scheme to the LAST '@' before the query, fragment, a quote or whitespace, so a
# password holding '@' or '/' ('rtsp://admin:p@ss@host', 'http://u:pa/ss@h') is masked whole
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^?#\s'\"]*)@")
# any query parameter whose name holds one of these words (token, access_token, api_key, X-Amz-Signature ...)
_SECRET_QUERY_RE = re.compile(r"(?i)([?&][^=&#\s]*(?:password|passwd|pwd|pass|token|key|secret|auth|signature|sig)[^=&#\s]*=)[^&#\s'\"]*")


def _mask_userinfo(m: re.Match) -> str:
    user, sep, _ = m["info"].partition(":")
    return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"  # no ':': the whole userinfo is a token


def mask_url(text: str) -> str:
    """Hide credentials in any text that may hold URLs: 'rtsp://user:pw@h/x?token=t' -> 'rtsp://user:***@h/x?token=***'."""
    text = _USERINFO_RE.sub(_mask_userinfo, str(text))
    return _SECRET_QUERY_RE.sub(r"\1***", text)
