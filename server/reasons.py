"""Why clients are left out, said in one line each: exclusion reasons, client errors condensed,
and the summary a round (or a run) that aggregated nothing logs at ERROR level.

A client that raises hands the server a Flower error whose ``reason`` is, in Flower's simulation
engine, a Ray traceback with ANSI colour codes (thousands of characters), and over gRPC
``"<class 'ValueError'>:<'message'>"``. :func:`condense_error` turns either into
``"ValueError: message"``; :func:`client_error` does so for a reply and sends the full text to
the DEBUG log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from logging import DEBUG

from flwr.app import Message
from flwr.common.logger import log

#: Exclusion reasons, and the integer code of each in the ``fedsieve-excluded-reasons`` metric
#: (MetricRecords hold numbers only; ``fedsieve-excluded.<reason>`` counts them by name).
REASON_CODES = {"failed-screening": 1, "too-polluted": 2, "over-reported": 3, "not-screened": 4,
                "nothing-kept": 5, "train-error": 6, "dropped-out": 7, "failed-spot-check": 8}
#: Longest condensed client error kept in logs, the audit log and metrics' reasons.
MAX_REASON_CHARS = 600

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
#: A traceback's exception line: ``ValueError: message`` or ``pkg.mod.CustomError: message``.
_EXCEPTION_LINE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault|Warning|Failure)"
    r"(?:\([\w.]*\))?)(?::\s?(?P<message>.*))?$")
#: Flower's own form: ``<class 'ValueError'>:<'message'>``.
_FLOWER_FORM = re.compile(r"^<class '(?P<type>[^']+)'>:<'(?P<message>.*)'>$", re.DOTALL)
#: Wrappers that only carry another exception: Flower's and Ray's.
_WRAPPERS = ("ClientAppException", "RayTaskError", "RayActorError")
_FLOWER_WRAPPED = re.compile(r"Exception ClientAppException occurred\. Message:\s*(.*)",
                             re.DOTALL)


@dataclass(frozen=True)
class Exclusion:
    """Why a client is left out of a round.

    Attributes
    ----------
    code : str
        A key of :data:`REASON_CODES` (checked): the reason's name.
    message : str
        What happened, in one line, for people reading logs and reports.
    """

    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in REASON_CODES:
            raise ValueError(f"unknown exclusion code {self.code!r}; one of "
                             f"{', '.join(REASON_CODES)}")

    @property
    def number(self) -> int:
        """The integer code reported in MetricRecords."""
        return REASON_CODES[self.code]

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def strip_ansi(text: str) -> str:
    """``text`` without ANSI escape sequences (terminal colours)."""
    return _ANSI.sub("", text)


def condense_error(reason: str, limit: int = MAX_REASON_CHARS) -> str:
    """One clean line naming a client's exception: ``"ValueError: message"``.

    Reads Flower's ``<class 'T'>:<'message'>`` form and the Ray tracebacks of Flower's
    simulation engine (the innermost exception that is not a Flower/Ray wrapper wins); strips
    ANSI colour codes and collapses whitespace; cuts the result at ``limit`` characters.
    """
    text = strip_ansi(str(reason)).strip()
    found = _from_traceback(text)
    if found is None:
        flower = _FLOWER_FORM.match(text)
        if flower:
            kind = flower["type"].rsplit(".", 1)[-1]
            message = flower["message"]
            found = _from_traceback(message)
            if found is None:
                wrapped = _FLOWER_WRAPPED.search(message)
                found = (wrapped.group(1) if wrapped and _is_wrapper(kind)
                         else f"{kind}: {message}")
        else:
            wrapped = _FLOWER_WRAPPED.search(text)
            found = wrapped.group(1) if wrapped else text
    line = " ".join(found.split())
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"


def _is_wrapper(kind: str) -> bool:
    return any(w in kind for w in _WRAPPERS)


def _from_traceback(text: str) -> str | None:
    """``Type: message`` of the first (the original, in a chained traceback) exception line
    that is not a wrapper, with the message's continuation lines; None without a traceback."""
    if "Traceback (most recent call last)" not in text and "\n  File " not in text:
        return None
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        match = _EXCEPTION_LINE.match(raw.strip())
        if not match or raw.startswith(" ") or _is_wrapper(match["type"]):
            continue
        parts = [match["message"] or ""]
        for more in lines[i + 1:]:  # a multi-line message runs to the next blank line
            if not more.strip() or more.startswith("The above exception"):
                break
            parts.append(more.strip())
        kind = match["type"].rsplit(".", 1)[-1]
        message = " ".join(p for p in parts if p)
        return f"{kind}: {message}" if message else kind
    return None


def client_error(reply: Message, node: int) -> str:
    """The condensed error of a reply that carries one; the full reason goes to DEBUG."""
    reason = reply.error.reason
    log(DEBUG, "fedsieve: node %s replied with a Flower error (code %s): %s", node,
        reply.error.code, strip_ansi(str(reason)))
    return condense_error(reason)


def describe_node(node: int, partitions: Mapping[int, int]) -> str:
    """``"partition 3 (node 8149…)"`` where the node said its partition, else ``"node 8149…"``."""
    partition = partitions.get(node)
    return f"node {node}" if partition is None else f"partition {partition} (node {node})"


def summarize_exclusions(exclusions: Mapping[int, Exclusion],
                         partitions: Mapping[int, int] | None = None) -> str:
    """Exclusions counted by reason, each with one example: ``"failed-screening: 3 clients,
    e.g. partition 0 (node 17…): <message>; over-reported: 1 client, e.g. ..."``."""
    partitions = partitions or {}
    by_code: dict[str, list[int]] = {}
    for node, exclusion in sorted(exclusions.items()):
        by_code.setdefault(exclusion.code, []).append(node)
    parts = []
    for code, nodes in sorted(by_code.items(), key=lambda item: (-len(item[1]), item[0])):
        first = nodes[0]
        clients = "client" if len(nodes) == 1 else "clients"
        parts.append(f"{code}: {len(nodes)} {clients}, e.g. {describe_node(first, partitions)}: "
                     f"{exclusions[first].message}")
    return "; ".join(parts)
