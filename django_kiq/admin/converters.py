"""The URL converter that carries any text (a queue name, an entry key) as one path segment.

Queue names and jids are whatever a job carries: ``/``, spaces, ``%``, ``?``, ``#``, unicode,
``..``. Django's ``str`` converter refuses ``/``, and ``path`` makes ``..`` a dot segment that
browsers and proxies rewrite. So text made only of safe characters (``mail``,
``1700000000.5|<jid>``) stays readable as it is, and anything else travels as ``~`` and its
UTF-8 in unpadded URL-safe base64. Imported by :mod:`django_kiq.admin.options`, which registers
it as ``kiq_text`` before building its URL patterns.
"""

from __future__ import annotations

import base64
import re

PLAIN = re.compile(r"[A-Za-z0-9_.:@|-]+")
MARK = "~"  # never in PLAIN, so an encoded value can never be read as a plain one


class TextConverter:
    regex = r"[^/]+"

    def to_python(self, value: str) -> str:
        if not value.startswith(MARK):
            return value  # a plain value, or a hand-typed one Django already unquoted
        data = value[len(MARK):]
        try:
            # A bad value raises ValueError (binascii.Error, UnicodeDecodeError): a 404.
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)).decode("utf-8")
        except ValueError:
            raise ValueError(f"{value!r} is not an encoded name") from None

    def to_url(self, value: str) -> str:
        if PLAIN.fullmatch(value) and value.strip("."):  # "." and ".." are dot segments
            return value
        return MARK + base64.urlsafe_b64encode(value.encode("utf-8")).rstrip(b"=").decode()
