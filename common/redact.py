"""Credentials out of URLs before they are logged, repr'd, put in events or listed by `/call/lists`.

One rule for every URL the server shows (the Redis URL in `Settings`' repr, a bot's or a webhook's URL in
logs and errors, the options `common.protocol.redact` lists): the password of a `scheme://user:password@`
authority or of a `sip:user:password@` URI (RFC 3261 §19.1.1 allows one), and the value of every query,
fragment or URI parameter whose name looks like a credential (`token`, `apiKey`, `X-Amz-Signature`,
`access_token` in a fragment, ...) become `***`. Anything else, a string that is no URL included, is kept
as it is: the user name and host stay, as a log reader needs them.

Hiding too much is the safe way to be wrong: a port followed by an `@` in the path (`http://h:80/@x`) reads
as a password, and a parameter named `monkey` as a key.
"""

from __future__ import annotations

import re

# `scheme://user:password@`: the password runs to the last `@` before the query or fragment, so one with an
# unescaped `@` or `/` in it is hidden whole.
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.-]*://[^/?#@:\s]*:)[^?#\s]*@", re.I)
# `sip:user:password@` (a SIP URI has no `@` after its user part, and neither user nor password has a `:`).
_SIP_PASSWORD = re.compile(r"\b(sips?:[^:@\s<>]*:)[^@\s<>]*@", re.I)
# A parameter whose name holds one of these words, after `?`, `&`, `#` or `;` (a SIP URI's parameters); its
# value runs to the next `&`, `#` or the end.
_SECRET_PARAM = re.compile(
    r"([?&#;][^=&#;?\s]*(?:token|key|secret|passw|pwd|auth|sig|credential)[^=&#;?\s]*=)[^&#\s]*", re.I
)


def redact_url(url: str) -> str:
    """`url` with its password and the values of its credential-like parameters replaced by `***`."""
    url = _URL_PASSWORD.sub(r"\1***@", url)
    url = _SIP_PASSWORD.sub(r"\1***@", url)
    return _SECRET_PARAM.sub(r"\1***", url)
