"""Job detail: every field of one job hash, its arguments pretty-printed, error and backtrace,
and its execution control (docs/execution.md): unique lock, iterable checkpoint, time limit,
expiry, and a Cancel button.

A job in a set is addressed by its entry key (score and jid, as the API gives it); a job in a
queue by its queue entry key (position and digest of its exact bytes: two jobs sharing a jid are
two different pages), or by its jid for links made by hand. A job that has left since the link
was made sends the user back to its list with a warning. ``find/<jid>/`` finds a job by its jid
wherever it is (``api.locate``) and sends the user to its page.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect

from django_kiq import api, results
from django_kiq.records import parse_queue_key

from ..present import cut, duration, field_text, moment, pretty_json
from .base import render, url
from .sets import Action, is_key, page_for


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """Where the job was found: breadcrumbs, its list, and what the page may do with it."""

    page: str  # the active tab
    crumbs: tuple[tuple[str, str], ...]
    list_url: str  # where the action forms post and return to
    score_label: str = ""  # what a set's score means ("Next retry", "Died"...)
    actions: tuple[Action, ...] = ()  # set row actions
    queue_delete: bool = False  # a queue job: Delete (by entry key) and Cancel (by jid)


def set_job(request: HttpRequest, slug: str, key: str, *, site: AdminSite) -> HttpResponse:
    page = page_for(slug)
    if not is_key(key):
        raise Http404("malformed job key")
    record = page.collection().get(key)
    if record is None:
        messages.warning(request, f"That job is no longer in the {page.title.lower()} set: it "
                                  "was retried, moved or deleted meanwhile.")
        return HttpResponseRedirect(url(request, slug))
    return _detail(request, site, record, Found(
        page=slug, crumbs=((page.title, url(request, slug)),), list_url=url(request, slug),
        score_label=page.when_label, actions=page.row_actions))


def queue_job(request: HttpRequest, name: str, key: str, *, site: AdminSite) -> HttpResponse:
    queue = api.Queue(name)
    record = queue.get(key) if is_queue_key(key) else queue.find(key)
    here = url(request, "queue", name)
    if record is None:
        messages.warning(request, f"That job is no longer in queue {name}: it has probably "
                                  "started.")
        return HttpResponseRedirect(here)
    return _detail(request, site, record, Found(
        page="queues", crumbs=(("Queues", url(request, "queues")), (name, here)), list_url=here,
        queue_delete=True))


#: api.locate's set names -> their pages' slugs
SET_PAGES = {"schedule": "scheduled", "retry": "retries", "dead": "dead"}


def find_job(request: HttpRequest, jid: str, *, site: AdminSite) -> HttpResponse:
    """A job by its jid, wherever it is now (the batch page links its members here): its page
    in its queue or set, the Busy page while it runs, or a page saying it is nowhere, with its
    result record if it keeps one."""
    found = api.locate(jid)
    if found is None:
        return render(request, site, "find.html", title=f"Job {jid}", page="find",
                      jid=jid, result=results.get(jid))
    if found.place == "queue":
        return HttpResponseRedirect(url(request, "queue_job", found.name, found.record.key))
    if found.place == "busy":
        messages.info(request, f"Job {jid} ({found.record.display_name}) is running in "
                               f"process {found.name}.")
        return HttpResponseRedirect(url(request, "busy"))
    return HttpResponseRedirect(url(request, "job", SET_PAGES[found.place], found.record.key))


def is_queue_key(key: str) -> bool:
    try:
        parse_queue_key(key)
    except ValueError:
        return False
    return True


def _detail(request: HttpRequest, site: AdminSite, record: api.JobRecord,
            found: Found) -> HttpResponse:
    times = (("Created", record.created_at), ("Enqueued", record.enqueued_at),
             ("Failed", record.failed_at), (found.score_label, record.score))
    return render(
        request, site, "job.html", title=f"Job {record.display_name}", page=found.page,
        crumbs=found.crumbs, record=record, found=found,
        fields=[(name, field_text(value)) for name, value in sorted(record.fields.items())],
        args=pretty_json(record.args), kwargs=pretty_json(record.kwargs) if record.kwargs else "",
        raw=record.raw.decode("utf-8", errors="backslashreplace") if record.malformed else "",
        times=[(label, moment(value)) for label, value in times if label and value],
        control=_control(record), result=results.get(record.jid))


CURSOR_CHARS = 500  # a checkpoint's cursor is shown cut to this many characters


def _control(record: api.JobRecord) -> dict | None:
    """What the page shows of the job's execution control, or None when it uses none."""
    timeout, expires = api.timeout_of(record), api.expires_at_of(record)
    lock, point = api.unique_lock(record), api.checkpoint(record)
    iterable = record.fields.get("kiq_iterable") is True
    if not (timeout or expires or lock or iterable):
        return None
    return {
        "timeout": duration(timeout) if timeout else None, "expires": moment(expires),
        "lock": lock, "lock_ttl": duration(lock.ttl) if lock and lock.ttl is not None else None,
        "iterable": iterable, "checkpoint": point,
        "cursor": cut(point.cursor, CURSOR_CHARS) if point else "",
        "saved": moment(point.saved_at) if point else None,
    }
