// behave-js: the JavaScript twin of the `behave` test fixture.
//
// Each event's `data` is a JSON object whose `action` chooses the outcome, so
// the integration tests can send the same events to the Rust, Python and
// JavaScript fixtures and expect the same results:
//
//   ok        return normally
//   retry     fail with `retry` ("asked to retry", `delay_ms` if given)
//   reject    fail with `reject` (`reason`, default "asked to reject")
//   publish   publish each of `publish: [{stream, type, data}]`; a refused
//             publish becomes a `reject` ("publish refused: <reason>")
//   trap      throw an exception that escapes `handle` (the instance traps)
//   log       log `message` at info and print it to stdout

import { log, publish } from 'sluice:plugin/host@0.1.0';

// A `failure` is thrown as `{ tag, val }`, the shape of the WIT variant.
const reject = (reason) => ({ tag: 'reject', val: reason });
const retry = (reason, delayMs) => ({ tag: 'retry', val: { reason, delayMs } });

function parse(bytes) {
  try {
    const data = JSON.parse(new TextDecoder().decode(bytes));
    return data !== null && typeof data === 'object' ? data : {};
  } catch {
    return {};
  }
}

function publishEach(items) {
  for (const item of items ?? []) {
    const body = new TextEncoder().encode(JSON.stringify(item.data ?? null));
    try {
      publish(item.stream ?? '', item.type ?? '', body);
    } catch (refused) {
      // An import's error throws; let it escape and the instance traps.
      // Turned into a reject, the reason reaches the dead-letter entry.
      throw reject(`publish refused: ${refused.payload ?? refused}`);
    }
  }
}

export const handler = {
  handle(event) {
    const data = parse(event.data);
    const action = data.action ?? 'ok';
    switch (action) {
      case 'ok':
        return;
      case 'retry':
        throw retry('asked to retry', data.delay_ms === undefined ? undefined : BigInt(data.delay_ms));
      case 'reject':
        throw reject(data.reason ?? 'asked to reject');
      case 'publish':
        publishEach(data.publish);
        return;
      case 'trap':
        throw new Error('asked to trap');
      case 'log':
        log('info', data.message ?? '');
        console.log(data.message ?? '');
        return;
      default:
        throw reject(`unknown action ${action}`);
    }
  },
};
