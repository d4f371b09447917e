"""notify-py: tells the customer their order has shipped (Python).

Consumes `order.shipped`, formats the message a customer would get, logs it,
and publishes it as `notification.sent` to the `notifications` stream (if
granted) for an email or push service to deliver. The event's correlation
id travels with the published event, so the whole order can be traced.

Outcomes: invalid input is rejected (it will never get better); a publish the
host refuses is rejected with the host's reason.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, host, types

REQUIRED = ("order_id", "carrier", "tracking_number")


def reject(reason):
    return Err(types.Failure_Reject(reason))


def message(shipment, shop):
    customer = shipment.get("customer") or "customer"
    return (
        f"Hello {customer}, your {shop} order {shipment['order_id']} is on its way "
        f"with {shipment['carrier']} (tracking {shipment['tracking_number']})."
    )


class Handler(exports.Handler):
    def handle(self, event: types.Event) -> None:
        if event.event_type != "order.shipped":
            return
        try:
            shipment = json.loads(event.data)
        except ValueError as e:
            raise reject(f"invalid shipment JSON: {e}")
        if not isinstance(shipment, dict):
            raise reject("invalid shipment JSON: not an object")
        missing = [k for k in REQUIRED if not shipment.get(k)]
        if missing:
            raise reject(f"shipment is missing {', '.join(missing)}")
        text = message(shipment, config.get("shop_name") or "Sluice shop")
        host.log(host.Level.INFO, text)
        body = json.dumps({"order_id": shipment["order_id"], "channel": "email", "text": text}).encode()
        try:
            host.publish("notifications", "notification.sent", body)
        except Err as refused:
            raise reject(f"cannot publish the notification: {refused.value}")
