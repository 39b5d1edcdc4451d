"""Retries, Scheduled and Dead: one generic view over the three sorted sets of jobs.

Each set is described by a :class:`SetPage` (its API class, column title, and the actions it
allows on selected rows and on the whole set); one view and one template serve all three.
Reads are paged in Redis by the API, and a filter is a bounded ZSCAN step that the page resumes
from Redis' cursor, so every request costs about the same with a million entries; whole-set
actions run server-side in batches (the API's ``*_all``) after a confirmation step.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import api
from django_kiq.records import parse_key

from ..paging import Pager
from ..present import JobRow
from . import control
from .base import MANAGE_PERM, back, confirm, confirmed, gone, perform, plural, render, url

SEARCH_LIMIT = 25  # matches wanted per search step (a step may return a few more)
SEARCH_BUDGET = api.SEARCH_BUDGET  # members one step scans at most


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    name: str  # the form value
    method: str  # the API method (takes keys for row actions, nothing for set-wide ones)
    label: str  # the button
    done: str  # past tense for the message: "Retried 3 jobs."
    danger: bool = False
    question: str = ""  # set-wide actions: the confirmation, with {jobs} and {set}


@dataclass(frozen=True, slots=True, kw_only=True)
class SetPage:
    slug: str
    title: str
    api_class: type[api.JobSet]
    when_label: str
    size_attr: str  # the api.Stats attribute holding the set's size
    failures: bool  # show retry count and error columns
    row_actions: tuple[Action, ...]
    all_actions: tuple[Action, ...]

    def collection(self) -> api.JobSet:
        return self.api_class()

    def action(self, name: str) -> tuple[Action, bool] | None:
        """(action, whole set?) for a posted name, or None if this set does not allow it."""
        for group, whole in ((self.row_actions, False), (self.all_actions, True)):
            for act in group:
                if act.name == name:
                    return act, whole
        return None


RETRY_NOW = Action(name="retry_now", method="retry_now", label="Retry now", done="Retried")
ADD_TO_QUEUE = Action(name="enqueue_now", method="enqueue_now", label="Add to queue",
                      done="Added to their queues")
DELETE = Action(name="delete", method="delete", label="Delete", done="Deleted", danger=True)
CANCEL = Action(name="cancel", method="", label="Cancel", done="Cancelled")
KILL = Action(name="kill", method="kill", label="Kill", done="Moved to the dead set",
              danger=True)
RETRY_ALL = Action(name="retry_all", method="retry_all", label="Retry all", done="Retried",
                   question="Push all {jobs} of the {set} set onto their queues now?")
ADD_ALL = Action(name="enqueue_all", method="enqueue_all", label="Add all to queue",
                 done="Added to their queues",
                 question="Push all {jobs} of the {set} set onto their queues now, ahead of "
                          "their time?")
DELETE_ALL = Action(name="delete_all", method="delete_all", label="Delete all", done="Deleted",
                    danger=True, question="Delete all {jobs} of the {set} set? This cannot be "
                                          "undone.")
KILL_ALL = Action(name="kill_all", method="kill_all", label="Kill all",
                  done="Moved to the dead set", danger=True,
                  question="Move all {jobs} of the {set} set to the dead set? They will not be "
                           "retried.")

PAGES = {
    "retries": SetPage(
        slug="retries", title="Retries", api_class=api.RetrySet, when_label="Next retry",
        size_attr="retry_size", failures=True, row_actions=(RETRY_NOW, CANCEL, DELETE, KILL),
        all_actions=(RETRY_ALL, DELETE_ALL, KILL_ALL)),
    "scheduled": SetPage(
        slug="scheduled", title="Scheduled", api_class=api.ScheduledSet, when_label="When",
        size_attr="scheduled_size", failures=False, row_actions=(ADD_TO_QUEUE, CANCEL, DELETE),
        all_actions=(ADD_ALL, DELETE_ALL)),
    "dead": SetPage(
        slug="dead", title="Dead", api_class=api.DeadSet, when_label="Died",
        size_attr="dead_size", failures=True,
        row_actions=(RETRY_NOW, DELETE), all_actions=(RETRY_ALL, DELETE_ALL)),
}


def page_for(slug: str) -> SetPage:
    try:
        return PAGES[slug]
    except KeyError:
        raise Http404(f"no job set {slug!r}") from None


def is_key(key: str) -> bool:
    """An entry key as the API makes them: ``<score>|<jid>`` (a NaN score is none)."""
    try:
        parse_key(key)
    except ValueError:
        return False
    return True


def job_set(request: HttpRequest, *, site: AdminSite, slug: str) -> HttpResponse:
    page = page_for(slug)
    jobs = page.collection()
    if request.method == "POST":
        return _act(request, site, page, jobs)
    # The set's size shown in the pager is the summary bar's: one read for both.
    stats = api.Stats()
    total = getattr(stats, page.size_attr)
    query = request.GET.get("q", "").strip()
    search = pager = None
    if query:
        # One bounded ZSCAN step per request (fast on a million entries); the page links to
        # the next step with the cursor Redis returned.
        search = jobs.search(query, cursor=_cursor(request), limit=SEARCH_LIMIT,
                             budget=SEARCH_BUDGET)
        records = search.records
    else:
        pager = Pager.from_request(request, total)
        records = jobs.jobs(pager.offset, pager.limit)
    rows = [JobRow.build(r, url(request, "job", slug, r.key)) for r in records]
    more = None
    if search is not None and not search.complete:
        more = "?" + urlencode({"q": query, "cursor": search.cursor})
    return render(request, site, "job_set.html", title=page.title, page=slug, set_page=page,
                  stats=stats, rows=rows, pager=pager, query=query, more_url=more,
                  scanned=f"{search.scanned:,}" if search else None,
                  size=f"{total:,}" if query else None, live=not query,
                  row_cancel=CANCEL in page.row_actions and request.user.has_perm(MANAGE_PERM))


def _cursor(request: HttpRequest) -> int:
    try:
        return max(0, int(request.GET.get("cursor", "0")))
    except ValueError:
        return 0


def _act(request: HttpRequest, site: AdminSite, page: SetPage, jobs: api.JobSet
         ) -> HttpResponse:
    found = page.action(request.POST.get("action", ""))
    if found is None:
        return HttpResponseBadRequest("this job set has no such action")
    act, whole = found
    here = url(request, page.slug)
    if act is CANCEL:  # ticked rows (keys), a row's button or the job page (jid)
        jids = control.posted_jids(request)
        if jids is None:
            return HttpResponseBadRequest("malformed job key")
        control.cancel(request, jids)
        return back(request, here)
    if not whole:
        keys = request.POST.getlist("key")
        if not all(map(is_key, keys)):
            return HttpResponseBadRequest("malformed job key")
        if not keys:
            messages.warning(request, "No jobs were selected: tick the jobs to act on first.")
            return back(request, here)
        perform(request, f"{act.label} ({plural(len(keys))})",
                lambda: getattr(jobs, act.method)(keys), lambda n: _outcome(act, n, len(keys)))
        return back(request, here)
    if not confirmed(request):
        return confirm(
            request, site, title=f"{act.label} – {page.title}", page=page.slug,
            crumbs=((page.title, here),),
            question=act.question.format(jobs=plural(jobs.size()), set=page.title.lower()),
            action=act.name, button=f"Yes, {act.label.lower()}", cancel_url=here,
            danger=act.danger)
    perform(request, act.label, getattr(jobs, act.method),
            lambda n: f"{act.done} {plural(n)}.")
    return back(request, here)


def _outcome(act: Action, count: int, asked: int) -> str | tuple[int, str]:
    text = f"{act.done} {plural(count)}."
    if count < asked:
        missing = asked - count
        return gone(f"{text} {plural(missing)} had already left the set (run, moved or "
                    "deleted meanwhile).")
    return text
