"""Busy: live worker processes with Quiet/Stop, and the jobs they are running (with Cancel, a
stuck badge for a job past its time limit that cannot be interrupted, and its deadline).
The processes of one ``kiq_worker --processes N`` supervisor are listed together under a row
naming it (each child's process info names its parent: worker/supervisor.py).

The processes, their running jobs and the summary bar come from one ``api.Stats`` snapshot
(one MULTI), read fresh at every request (admin pages are never cached): the page shows the
work hashes exactly as old as the workers' last write of them.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from django_kiq import api

from ..present import Moment, args_preview, moment
from . import control
from .base import back, confirm, confirmed, perform, render, url

# action -> (ProcessSet method, label). Quiet: stop fetching new jobs; Stop: shut down.
ONE = {"quiet": ("quiet", "Quiet"), "stop": ("stop", "Stop")}
ALL = {"quiet_all": ("quiet_all", "Quiet"), "stop_all": ("stop_all", "Stop")}


def busy(request: HttpRequest, *, site: AdminSite) -> HttpResponse:
    if request.method == "POST":
        return _act(request, site)
    stats = api.Stats(processes=True)
    processes = stats.processes or []  # a list: processes=True
    rows = _grouped([{"process": p, "started": moment(p.started_at), "beat": moment(p.beat),
                      "rss_mb": round(p.rss_kb / 1024, 1) if p.rss_kb else None,
                      "queues": ", ".join(p.queues)} for p in processes])
    work = [{"work": w, "args": args_preview(w.job), "run_at": moment(w.run_at),
             "deadline": _deadline(w)} for p in processes for w in p.work]
    return render(request, site, "busy.html", title="Busy", page="busy", stats=stats,
                  processes=rows, work=work, live=True)


def _grouped(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each supervisor's children together, in their order; the first child of
    a group carries the group's heading (``header``), each child its place (``member``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        parent = _supervisor_of(row["process"])
        row["parent"] = parent
        key = f"s:{parent['identity']}" if parent else f"p:{row['process'].identity}"
        groups.setdefault(key, []).append(row)
    out: list[dict[str, Any]] = []
    for members in groups.values():
        parent = members[0]["parent"]
        if parent is not None:
            members.sort(key=lambda r: r["parent"]["index"])
            host = members[0]["process"].hostname or "?"
            members[0]["header"] = {"label": f"{host}:{parent['pid']}", "count": len(members),
                                    "identity": parent["identity"]}
            for row in members:
                row["member"] = f"worker {row['parent']['index'] + 1} of {parent['processes']}"
        out.extend(members)
    return out


def _supervisor_of(process: api.ProcessRecord) -> dict[str, Any] | None:
    """The supervisor a process names in its info, or None (read from Redis: checked)."""
    value = process.info.get("supervisor")
    if not isinstance(value, dict):
        return None
    identity, pid = value.get("identity"), value.get("pid")
    index, count = value.get("index"), value.get("processes")
    if not (isinstance(identity, str) and type(pid) is int and type(index) is int
            and type(count) is int):
        return None
    return {"identity": identity, "pid": pid, "index": index, "processes": count}


def _deadline(work: api.WorkRecord) -> Moment | None:
    """When the job's own time limit (``kiq_timeout``) runs out, or None."""
    timeout = api.timeout_of(work.job)
    return moment(work.run_at + timeout) if timeout and work.run_at else None


def _act(request: HttpRequest, site: AdminSite) -> HttpResponse:
    action = request.POST.get("action", "")
    processes = api.ProcessSet()
    if action == "cancel":
        jids = control.posted_jids(request)
        if jids is None or len(jids) != 1:
            return HttpResponseBadRequest("one jid is required")
        control.cancel(request, jids)
        return back(request, url(request, "busy"))
    if action in ONE:
        identity = request.POST.get("identity", "")
        if not identity:
            return HttpResponseBadRequest("identity is required")
        method, verb = ONE[action]
        perform(request, f"{verb} {identity}", lambda: getattr(processes, method)(identity),
                lambda _: f"Asked {identity} to {verb.lower()}; it obeys at its next heartbeat.")
        return back(request, url(request, "busy"))
    if action in ALL:
        method, verb = ALL[action]
        if not confirmed(request):
            here = url(request, "busy")
            count = len(processes.list())
            return confirm(
                request, site, title=f"{verb} all processes", page="busy",
                crumbs=(("Busy", here),),
                question=f"{verb} all {count:,} running worker processes?",
                action=action, button=f"Yes, {verb.lower()} all", cancel_url=here,
                danger=action == "stop_all")
        perform(request, f"{verb} all", getattr(processes, method),
                lambda _: f"Asked every process to {verb.lower()}; they obey at their next "
                          "heartbeat.")
        return back(request, url(request, "busy"))
    return HttpResponseBadRequest(f"unknown action {action!r}")
