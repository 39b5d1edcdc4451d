"""Offset paging for the queue and job-set pages.

The API pages in Redis (``LRANGE``/``ZRANGE`` with limits), so any offset costs the same: the
pager only computes offsets and links from ``?offset=`` and the collection's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpRequest, QueryDict

PER_PAGE = 25
PER_PAGE_CHOICES = (25, 50, 100)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pager:
    offset: int
    limit: int
    total: int
    query: QueryDict

    @classmethod
    def from_request(cls, request: HttpRequest, total: int) -> "Pager":
        limit = _int(request.GET.get("per_page"), PER_PAGE)
        if limit not in PER_PAGE_CHOICES:
            limit = PER_PAGE
        offset = max(0, _int(request.GET.get("offset"), 0))
        if total and offset >= total:
            offset = _last(total, limit)  # a page emptied since the link was made
        return cls(offset=offset, limit=limit, total=total, query=request.GET.copy())

    @property
    def start(self) -> int:
        """1-based index of the first row shown (0 when empty)."""
        return self.offset + 1 if self.total else 0

    @property
    def end(self) -> int:
        return min(self.offset + self.limit, self.total)

    @property
    def summary(self) -> str:
        """"26–50 of 1,234" (or "0")."""
        if not self.total:
            return "0"
        return f"{self.start:,}–{self.end:,} of {self.total:,}"

    @property
    def page(self) -> int:
        return self.offset // self.limit + 1

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.limit))

    @property
    def first_url(self) -> str | None:
        return self.url(0) if self.offset > 0 else None

    @property
    def prev_url(self) -> str | None:
        return self.url(max(0, self.offset - self.limit)) if self.offset > 0 else None

    @property
    def next_url(self) -> str | None:
        nxt = self.offset + self.limit
        return self.url(nxt) if nxt < self.total else None

    @property
    def last_url(self) -> str | None:
        last = _last(self.total, self.limit)
        return self.url(last) if self.offset < last else None

    def url(self, offset: int) -> str:
        query = self.query.copy()
        if offset:
            query["offset"] = str(offset)
        else:
            query.pop("offset", None)
        encoded = query.urlencode()
        return f"?{encoded}" if encoded else "?"


def _last(total: int, limit: int) -> int:
    return max(0, (total - 1) // limit * limit)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
