"""{{name}}: a Sluice event handler.

Sluice calls `handle` once per delivery of an event. Return normally and the
event is acknowledged; raise `Err(types.Failure_Retry(...))` to have it
delivered again after a backoff, or `Err(types.Failure_Reject(reason))` to
send it to the dead-letter stream now. Any other exception traps the instance
and counts as a retry.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


def reject(reason):
    return Err(types.Failure_Reject(reason))


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        # Bad input never gets better: reject it, with a reason an operator
        # will read in the dead-letter entry.
        try:
            data = json.loads(event.data)
        except ValueError as e:
            raise reject(f"data is not JSON: {e}")
        if not isinstance(data, dict):
            raise reject("data is not a JSON object")
        host.log(
            host.Level.INFO,
            f"{event.event_type} {event.id} (attempt {event.attempt}): {len(data)} field(s)",
        )
        # To publish, grant the stream in config.toml (publish = ["audit"]).
        # A refused publish raises Err with a plain string: catch it, or the
        # instance traps.
        #   try:
        #       host.publish("audit", "order.seen", event.data)
        #   except Err as refused:
        #       raise reject(f"cannot publish: {refused.value}")
