"""behave-py: the Python twin of the `behave` test fixture.

Each event's `data` is a JSON object whose `action` chooses the outcome, so
the integration tests can send the same events to the Rust, Python and
JavaScript fixtures and expect the same results:

  ok        return normally
  retry     fail with `retry` ("asked to retry", `delay_ms` if given)
  reject    fail with `reject` (`reason`, default "asked to reject")
  publish   publish each of `publish: [{stream, type, data}]`; a refused
            publish becomes a `reject` ("publish refused: <reason>")
  trap      raise an exception that escapes `handle` (the instance traps)
  log       log `message` at info and print it to stdout
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


def retry(reason, delay_ms=None):
    return Err(types.Failure_Retry(types.RetryAfter(reason, delay_ms)))


def publish_each(items):
    for item in items or []:
        body = json.dumps(item.get("data"), separators=(",", ":")).encode()
        try:
            host.publish(item.get("stream", ""), item.get("type", ""), body)
        except Err as refused:
            # An import's error raises; let it escape and the instance traps.
            # Turned into a reject, the reason reaches the dead-letter entry.
            raise Err(types.Failure_Reject(f"publish refused: {refused.value}"))


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        try:
            data = json.loads(event.data)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        action = data.get("action", "ok")
        if action == "ok":
            return
        if action == "retry":
            raise retry("asked to retry", data.get("delay_ms"))
        if action == "reject":
            raise Err(types.Failure_Reject(data.get("reason", "asked to reject")))
        if action == "publish":
            publish_each(data.get("publish"))
            return
        if action == "trap":
            raise RuntimeError("asked to trap")
        if action == "log":
            host.log(host.Level.INFO, data.get("message", ""))
            print(data.get("message", ""))
            return
        raise Err(types.Failure_Reject(f"unknown action {action}"))
