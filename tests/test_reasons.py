"""Client errors condensed to one line, and exclusions summarized by reason name."""

from __future__ import annotations

import pytest

from fedsieve.server.reasons import (
    MAX_REASON_CHARS,
    Exclusion,
    condense_error,
    describe_node,
    summarize_exclusions,
)

# The shape of what Flower 1.41's simulation engine hands the server when a ClientApp raises
# (captured from a run, paths shortened): Flower's "<class ...>:<'...'>" around a Ray traceback
# with ANSI colours, the original exception first, then Flower's wrapper.
RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor."
    "run()\x1b[39m (pid=30140, ip=192.0.2.2, actor_id=b8f8aa8cd98af4781e3eee5301000000, repr="
    "<flwr.simulation.ray_transport.ray_actor.ClientAppActor object at 0x7f678c4a01d0>)\n"
    "                  ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
    "  File \"/venv/lib/python3.11/site-packages/flwr/clientapp/client_app.py\", line 161, in "
    "__call__\n    return self._registered_funcs[full_name](message, context)\n"
    "  File \"/repo/shared/images.py\", line 142, in check_images\n"
    "    raise ValueError(f\"{name} has dtype {X.dtype}; {_FORMS} (convert with \"\n"
    "ValueError: local samples has dtype float64 with values in [0, 255]; pass uint8 images\n"
    "\nThe above exception was the direct cause of the following exception:\n\n"
    "\x1b[36mray::ClientAppActor.run()\x1b[39m (pid=30140, ip=192.0.2.2)\n"
    "  File \"/venv/lib/python3.11/site-packages/flwr/simulation/ray_transport/ray_actor.py\", "
    "line 65, in run\n    raise ClientAppException(str(ex)) from ex\n"
    "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
    "Message: local samples has dtype float64 with values in [0, 255]; pass uint8 images'>")


@pytest.mark.parametrize("reason, expected", [
    (RAY_REASON, "ValueError: local samples has dtype float64 with values in [0, 255]; pass "
                 "uint8 images"),
    # Flower's SuperNode (gRPC): "<class 'T'>:<'message'>".
    ("<class 'ZeroDivisionError'>:<'division by zero'>", "ZeroDivisionError: division by zero"),
    ("<class 'my.pkg.DataError'>:<'bad\n  thing'>", "DataError: bad thing"),
    # A Flower wrapper without the traceback: the wrapped message.
    ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException "
     "occurred. Message: boom'>", "boom"),
    # Already one line (fedsieve's in-process grid): unchanged.
    ("RuntimeError: injected fault", "RuntimeError: injected fault"),
    ("\x1b[31mred\x1b[0m text\n\nover lines", "red text over lines"),
])
def test_client_errors_are_condensed_to_one_clean_line(reason, expected):
    line = condense_error(reason)
    assert line == expected
    assert "\x1b" not in line and "\n" not in line


def test_a_python_traceback_gives_its_original_exception():
    reason = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
              "    f()\nKeyError: 'partition-id'\n\nThe above exception was the direct cause "
              "of the following exception:\n\nTraceback (most recent call last):\n"
              "RuntimeError: wrapper")
    assert condense_error(reason) == "KeyError: 'partition-id'"


def test_long_reasons_are_cut():
    line = condense_error("ValueError: " + "x" * 5000)
    assert len(line) == MAX_REASON_CHARS and line.endswith("…")


def test_exclusions_are_counted_by_reason_with_one_example_each():
    exclusions = {
        30: Exclusion("failed-screening", "the client raised an error while uploading: "
                      "ValueError: dtype float64"),
        10: Exclusion("failed-screening", "no reply to the screening request within 600 s"),
        20: Exclusion("over-reported", "claims 1037 training samples but kept 788"),
    }
    text = summarize_exclusions(exclusions, {10: 0, 20: 4})
    assert text == ("failed-screening: 2 clients, e.g. partition 0 (node 10): no reply to the "
                    "screening request within 600 s; over-reported: 1 client, e.g. partition 4 "
                    "(node 20): claims 1037 training samples but kept 788")
    assert describe_node(30, {10: 0}) == "node 30"
