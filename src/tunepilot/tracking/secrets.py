"""Secrets never leave the machine through a tracker: tokens, keys and passwords are redacted.

A value is a secret when its key names one (token, key, secret, password...) or when it contains the
value of an environment variable whose name does (HF_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_PASSWORD,
AWS_SECRET_ACCESS_KEY...): a token pasted into a config field is caught by its value. A URL's
user:password part is removed as well.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
# Whole words of a name (HF_TOKEN, WANDB_API_KEY, mlflow.password), not parts (tokenizer, TOKENIZERS_...)
_SECRET_NAME = re.compile(
    r"(?:^|[_.\-])(TOKEN|SECRET|PASSWORD|PASSWD|APIKEY|API_KEY|ACCESS_KEY|PRIVATE_KEY|"
    r"CREDENTIALS?|AUTH)(?:$|[_.\-])",
    re.IGNORECASE,
)
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true") would redact ordinary text


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return sorted(
        {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}, key=len, reverse=True
    )


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    for value in secrets if secrets is not None else secret_values():
        text = text.replace(value, REDACTED)
    return _strip_userinfo(text)


def redact_params(params: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    secrets = secret_values(environ)
    return {k: REDACTED if _SECRET_NAME.search(k) and v else redact_text(v, secrets) for k, v in params.items()}


def _strip_userinfo(text: str) -> str:
    if "@" not in text or "://" not in text:
        return text
    parts = urlsplit(text)
    if not (parts.username or parts.password):
        return text
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
