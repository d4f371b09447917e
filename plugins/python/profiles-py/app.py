"""profiles-py: the event-sourced projection of plugins/profiles, in Python.

Folds each user's `user.created`, `user.updated` and `user.deleted` events
into one record in kv, `user:<user_id>`, which `sluice kv get HANDLER
user:<user_id>` shows. Run with `order_by = "data.user_id"`, so one user's
events fold one at a time, in stream order, on any number of hosts.

    user.created {user_id, ...}  the data, with version 1
    user.updated {user_id, ...}  the record with the data's fields over it, version + 1;
                                 an unknown user is rejected
    user.deleted {user_id}       no record

The fold only depends on the events, so `sluice replay` of the stream
rebuilds the records from scratch.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import kv, types


def reject(reason):
    return Err(types.Failure_Reject(reason))


def load(key):
    try:
        stored = kv.get(key)
    except Err as e:  # Redis unreachable: a retry may pass
        raise Err(types.Failure_Retry(types.RetryAfter(f"kv get failed: {e.value}", None)))
    return None if stored is None else json.loads(stored)


def save(key, record):
    kv.set(key, json.dumps(record, separators=(",", ":")).encode(), None)


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        try:
            data = json.loads(event.data)
        except ValueError as e:
            raise reject(f"expected a JSON object: {e}")
        if not isinstance(data, dict):
            raise reject("expected a JSON object")
        user_id = data.get("user_id")
        if not isinstance(user_id, str):
            raise reject("the event has no user_id")
        key = f"user:{user_id}"
        if event.event_type == "user.created":
            save(key, {**data, "version": 1})
        elif event.event_type == "user.updated":
            record = load(key)
            if record is None:
                raise reject(f"user {user_id} is unknown (no user.created before this update)")
            save(key, {**record, **data, "version": record.get("version", 0) + 1})
        elif event.event_type == "user.deleted":
            kv.delete(key)
        else:
            raise reject(f"profiles does not handle {event.event_type} events")
