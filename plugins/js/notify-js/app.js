// notify-js: tells the customer their order has shipped (JavaScript).
//
// Consumes `order.shipped`, formats the message a customer would get, logs it,
// and publishes it as `notification.sent` to the `notifications` stream (if
// granted) for an email or push service to deliver. The event's correlation
// id travels with the published event, so the whole order can be traced.
//
// Outcomes: invalid input is rejected (it will never get better); a publish the
// host refuses is rejected with the host's reason.

import { log, publish } from 'sluice:plugin/host@0.1.0';
import { get } from 'sluice:plugin/config@0.1.0';

const REQUIRED = ['order_id', 'carrier', 'tracking_number'];

// A `failure` is thrown as `{ tag, val }`, the shape of the WIT variant.
const reject = (reason) => ({ tag: 'reject', val: reason });

function message(s, shop) {
  const customer = s.customer || 'customer';
  return `Hello ${customer}, your ${shop} order ${s.order_id} is on its way with ${s.carrier} (tracking ${s.tracking_number}).`;
}

export const handler = {
  handle(event) {
    if (event.eventType !== 'order.shipped') return;
    let shipment;
    try {
      shipment = JSON.parse(new TextDecoder().decode(event.data));
    } catch (e) {
      throw reject(`invalid shipment JSON: ${e.message}`);
    }
    if (shipment === null || typeof shipment !== 'object') throw reject('invalid shipment JSON: not an object');
    const missing = REQUIRED.filter((k) => !shipment[k]);
    if (missing.length) throw reject(`shipment is missing ${missing.join(', ')}`);
    const text = message(shipment, get('shop_name') ?? 'Sluice shop');
    log('info', text);
    const body = new TextEncoder().encode(JSON.stringify({ order_id: shipment.order_id, channel: 'email', text }));
    try {
      publish('notifications', 'notification.sent', body);
    } catch (refused) {
      throw reject(`cannot publish the notification: ${refused.payload ?? refused}`);
    }
  },
};
