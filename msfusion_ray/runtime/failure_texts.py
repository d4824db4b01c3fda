"""Failures that Ray reports, told in one line: what failed, and the likely cause where Ray knows it.

Ray's own texts run to many lines (an actor's id, its class, a list of "potential root causes", a remote
traceback); the user gets one line from `describe_failure`, and the full text goes to the run's log
(runs/<id>/run.log: msfusion_ray.runtime.run_log).
"""

from __future__ import annotations

import re

_PID = re.compile(r"\bpid: (\d+)")
_MODULE_PATH = re.compile(r"^(?:\w+\.)+(?=\w+:)")
_EXIT_DETAIL = re.compile(r"Worker exit detail: (.+?)(?:\.\s|\.$|$)", re.MULTILINE)


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def raised_line(traceback_text: str) -> str:
    """The exception a traceback's text ends with, its class without the module path."""
    lines = [line.strip() for line in traceback_text.splitlines() if line.strip()]
    return _MODULE_PATH.sub("", lines[-1]) if lines else ""


def likely_cause(text: str) -> str:
    """What Ray's text says killed a process, in a few words ('' when it does not know)."""
    lowered = text.lower()
    if "low on memory" in lowered or "memory monitor" in lowered or "outofmemory" in lowered:
        return "killed by Ray's memory monitor: the node ran low on memory"
    if "ray.kill" in lowered or "intentional" in lowered:
        return "killed on purpose (ray.kill)"
    if "node" in lowered and ("died" in lowered or "dead" in lowered) and "raylet" in lowered:
        return "its node died"
    if "unexpectedly exits" in lowered or "end of file" in lowered:
        return "it ended without a word: killed (SIGKILL, the kernel's OOM killer) or crashed"
    detail = _EXIT_DETAIL.search(text)
    if detail:
        return f"Ray says: {detail.group(1).strip()}"
    return ""


def describe_failure(err: BaseException, subject: str, where: str = "") -> str:
    """One line for a failure of `subject` (e.g. "the driver actor", "host 2") that Ray reported as `err`;
    `where` (e.g. "node 127.0.0.3") says where its process ran."""
    from ray.exceptions import (ActorUnavailableError, GetTimeoutError, NodeDiedError, ObjectLostError,
                                OutOfMemoryError, RayActorError, RayTaskError)

    at = f" on {where}" if where else ""
    if isinstance(err, RayTaskError):
        cause = err.cause if err.cause is not None else err
        return f"{subject} raised {type(cause).__name__}: {first_line(cause) or '(no message)'}"
    if isinstance(err, OutOfMemoryError):
        return f"{subject}{at} was killed by Ray's memory monitor (the node ran low on memory)"
    if isinstance(err, ActorUnavailableError):  # its connection broke: the process, or its node, is gone
        return f"{subject}'s process{at} stopped answering (its node lost, or the process killed)"
    if isinstance(err, RayActorError):
        text = str(err)
        if err.actor_init_failed:  # the text ends with the exception its constructor raised
            return f"{subject}{at} failed while starting: {raised_line(text)}"
        pid = _PID.search(text)
        cause = likely_cause(text)
        return (f"{subject}'s process{f' (pid {pid.group(1)})' if pid else ''}{at} died"
                f"{f' ({cause})' if cause else ''}")
    if isinstance(err, NodeDiedError):
        return f"the node of {subject}{at} died ({first_line(err)})"
    if isinstance(err, GetTimeoutError):
        return f"{subject} did not answer in time ({first_line(err)})"
    if isinstance(err, ObjectLostError):
        return f"data of {subject} was lost from the object store ({first_line(err)})"
    return f"{subject}: {type(err).__name__}: {first_line(err) or '(no message)'}"
