"""Keep secrets out of trackers: secret-looking config values, URI credentials and secret query parameters."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Whole words of the key's last part: `hf_token`, `api_key`, `password`, but not `tokenizer`.
_SECRET_KEY = re.compile(
    r"(?:^|[_-])(?:token|password|passwd|secret|api[_-]?key|credentials?|webhook[_-]?url)(?:$|[_-])", re.IGNORECASE)
REDACTED = "***"

# Query (and fragment) parameters that carry a credential: `db?password=` (libpq), `hook?token=`, `&sig=`
# (Azure SAS), `X-Amz-Signature` (S3 presigned), `#access_token=` (OAuth), `;AccountKey=` (connection
# strings). A name is secret when one of its words is one of these: whole words, so `keyword` or `passes`
# are not, while `api_key`, `apiKey`, `X-Amz-Security-Token` and `client_secret` are.
_SECRET_PARAM_WORDS = frozenset({
    "password", "passwd", "pwd", "pass", "token", "secret", "key", "apikey", "sig", "signature", "auth", "sas",
    "credential", "credentials", "jwt"})
# `lead name=value`: the value runs to the next separator, or to whitespace or a quote when the URL sits in a
# sentence or a repr. `;` separates in connection strings and some URL dialects (jdbc).
_PARAM = re.compile(r"(?P<lead>[?&#;])(?P<name>[A-Za-z0-9_.\-]+)=(?P<value>[^&#;\s'\"<>]+)")
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")  # snake, kebab, dotted and camelCase words


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key.rsplit(".", 1)[-1]))


def is_secret_param(name: str) -> bool:
    """Whether a query parameter named ``name`` carries a credential (``token``, ``X-Amz-Signature``...)."""
    words = {w.lower() for w in _WORD.findall(name)}
    return bool(words & _SECRET_PARAM_WORDS) or name.lower() in _SECRET_PARAM_WORDS


def mask_params(text: str) -> str:
    """``https://h/x?token=abc&n=1`` -> ``https://h/x?token=***&n=1``: the values of secret parameters masked.

    The name stays, so the reader still sees that a token was given (and where to put it back).
    """
    if "=" not in text:
        return text
    return _PARAM.sub(lambda m: f"{m['lead']}{m['name']}={REDACTED}" if is_secret_param(m["name"]) else m[0],
                      text)


def strip_userinfo(uri: str) -> str:
    """The URI as it may be shown or stored: ``https://user:pw@host/x?token=t`` -> ``https://host/x?token=***``.

    Other strings are unchanged, except for a ``?secret=value`` inside them.
    """
    try:
        parts = urlsplit(uri)
        if parts.username is None and parts.password is None:
            return mask_params(uri)
        host = parts.hostname or ""
        if parts.port:  # raises ValueError for a port that is not a number
            host = f"{host}:{parts.port}"
    except ValueError:
        return redact_text(uri)  # not a URI urllib understands: remove what looks like credentials anyway
    return mask_params(urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)))


# ``scheme://user:password@`` anywhere in a text (an exception message, a log line, a traceback).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_text(text: str) -> str:
    """Remove the credentials of every URI inside ``text``: ``http://u:pw@host/?token=t`` -> ``http://***@host/?token=***``."""
    return mask_params(_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return strip_userinfo(value) if "://" in value else value
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
