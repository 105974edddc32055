"""Keep secrets out of trackers: secret-looking config values and URI credentials."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Whole words of the key's last part: `hf_token`, `api_key`, `password`, but not `tokenizer`.
_SECRET_KEY = re.compile(
    r"(?:^|[_-])(?:token|password|passwd|secret|api[_-]?key|credentials?|webhook[_-]?url)(?:$|[_-])", re.IGNORECASE)
REDACTED = "***"


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def strip_userinfo(uri: str) -> str:
    """``https://user:pw@host/x`` -> ``https://host/x``; other strings unchanged."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# ``scheme://user:password@`` anywhere in a text (an exception message, a log line, a traceback).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_text(text: str) -> str:
    """Remove the credentials of every URI inside ``text``: ``http://u:pw@host`` -> ``http://***@host``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return strip_userinfo(value) if "@" in value and "://" in value else value
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _redact_spec(spec: str) -> str:
    """``webhook=https://hooks.slack.com/...`` -> ``webhook=***``: a tracker's argument may be a secret URL."""
    name, sep, arg = spec.partition("=")
    return f"{name}={REDACTED}" if sep and arg else spec


def redact(flat: dict[str, Any]) -> dict[str, Any]:
    """Redact values of secret-looking keys and tracker arguments; strip credentials from URI values."""
    out = {}
    for k, v in flat.items():
        if is_secret_key(k) and v not in (None, ""):
            out[k] = REDACTED
        elif k.rsplit(".", 1)[-1] == "trackers" and isinstance(v, (list, tuple)):
            out[k] = [_redact_spec(str(s)) for s in v]
        else:
            out[k] = _clean(v)
    return out
