"""common.redact.redact_url: the one rule for URLs shown in logs, reprs, events and `/call/lists`.

It replaced two that differed: Settings' repr hid only a `user:password@` password (a `?password=` or
`?token=` stayed visible), and the option redaction hid query credentials but kept the part of a password
after an `@`. Neither hid the password of a `sip:` URI.
"""

from __future__ import annotations

import pytest

from common.config import Settings
from common.protocol import MediaPassOption, redact
from common.redact import redact_url


@pytest.mark.parametrize(
    "url,shown",
    [
        # Authority passwords (the Redis URL in Settings' repr, bot and webhook URLs).
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
        ("rediss://user:p@ss/w:rd@h/0", "rediss://user:***@h/0"),
        ("wss://u:pw@h/p?token=abc&lang=en", "wss://u:***@h/p?token=***&lang=en"),
        ("https://user@h/hook", "https://user@h/hook"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        # Credentials in query parameters and fragments.
        ("ws://h/p?apiKey=k1&x=1", "ws://h/p?apiKey=***&x=1"),
        (
            "https://h/a.wav?X-Amz-Signature=abc&X-Amz-Credential=AK/1&v=2",
            "https://h/a.wav?X-Amz-Signature=***&X-Amz-Credential=***&v=2",
        ),
        (
            "https://h/eou?secret=s&key=k&api_key=a&access_token=t&auth=x&password=p",
            "https://h/eou?secret=***&key=***&api_key=***&access_token=***&auth=***&password=***",
        ),
        ("https://h/cb#access_token=t&state=1", "https://h/cb#access_token=***&state=1"),
        ("https://h/a.wav?lang=en&voice=1", "https://h/a.wav?lang=en&voice=1"),
        # SIP URIs (RFC 3261 §19.1.1's user:password, and URI parameters).
        ("sip:alice:pw@pbx.example.com;transport=tcp", "sip:alice:***@pbx.example.com;transport=tcp"),
        ("sips:alice:pw@pbx.example.com:5061", "sips:alice:***@pbx.example.com:5061"),
        ('"Alice" <sip:alice:pw@h>', '"Alice" <sip:alice:***@h>'),
        ("sip:alice@h:5060;token=t", "sip:alice@h:5060;token=***"),
        ("sip:alice@h:5060", "sip:alice@h:5060"),
        ("sip:h:5060", "sip:h:5060"),
        # Not URLs: kept as they are.
        ("", ""),
        ("hello world", "hello world"),
        ("/var/lib/pbx/a.wav", "/var/lib/pbx/a.wav"),
        ("12:30 at the desk", "12:30 at the desk"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@h:1/0",
        "redis://h:1/0?password=hunter2",
        "rediss://user:hunter2@h:1/0",
    ],
)
def test_settings_repr_hides_the_redis_password(url: str) -> None:
    settings = Settings.from_env({"REDIS_URL": url}, dotenv=None)
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)


def test_option_urls_and_their_repr() -> None:
    shown = redact({"mediaPass": {"url": "ws://u:hunter2@h/p?token=t0k&x=1"}})
    assert shown == {"mediaPass": {"url": "ws://u:***@h/p?token=***&x=1"}}
    assert "hunter2" not in repr(MediaPassOption(url="ws://u:hunter2@h/p?apiKey=k1"))
    assert "k1" not in repr(MediaPassOption(url="ws://h/p?apiKey=k1"))


def test_listed_options_hide_credentials_in_any_string() -> None:
    option = {
        "callee": "sip:bob:hunter2@pbx.example.com",
        "eou": {"type": "tencent", "endpoint": "https://h/eou?token=t0k"},
        "mediaPass": {"url": "wss://u:pw@h/p"},
        "sip": {"username": "alice", "password": "pw"},
        "headers": {"X-Note": "plain text stays"},
        "list": ["https://h/a.wav?sig=abc", 3, None],
    }
    assert redact(option) == {
        "callee": "sip:bob:***@pbx.example.com",
        "eou": {"type": "tencent", "endpoint": "https://h/eou?token=***"},
        "mediaPass": {"url": "wss://u:***@h/p"},
        "sip": {"username": "alice", "password": "***"},
        "headers": {"X-Note": "plain text stays"},
        "list": ["https://h/a.wav?sig=***", 3, None],
    }
