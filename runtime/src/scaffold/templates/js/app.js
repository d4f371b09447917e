// {{name}}: a Sluice event handler.
//
// Sluice calls `handle` once per delivery of an event. Return normally and the
// event is acknowledged; throw `{ tag: 'retry', val: { reason, delayMs } }` to
// have it delivered again after a backoff, or `{ tag: 'reject', val: reason }`
// to send it to the dead-letter stream now. Anything else thrown traps the
// instance and counts as a retry.

import { log } from 'sluice:plugin/host@0.1.0';

const reject = (reason) => ({ tag: 'reject', val: reason });

export const handler = {
  handle(event) {
    // Bad input never gets better: reject it, with a reason an operator will
    // read in the dead-letter entry.
    let data;
    try {
      data = JSON.parse(new TextDecoder().decode(event.data));
    } catch (e) {
      throw reject(`data is not JSON: ${e.message}`);
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) throw reject('data is not a JSON object');
    log('info', `${event.eventType} ${event.id} (attempt ${event.attempt}): ${Object.keys(data).length} field(s)`);
    // To publish, import `publish` too and grant the stream in config.toml
    // (publish = ["audit"]). A refused publish throws: catch it, or the
    // instance traps.
    //   try {
    //     publish('audit', 'order.seen', event.data);
    //   } catch (refused) {
    //     throw reject(`cannot publish: ${refused.payload ?? refused}`);
    //   }
  },
};
