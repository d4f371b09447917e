// profiles-js: the event-sourced projection of plugins/profiles, in
// JavaScript. Folds each user's `user.created`, `user.updated` and
// `user.deleted` events into one record in kv, `user:<user_id>`, which
// `sluice kv get HANDLER user:<user_id>` shows. Run with
// `order_by = "data.user_id"`, so one user's events fold one at a time, in
// stream order, on any number of hosts.
//
//   user.created {user_id, ...}  the data, with version 1
//   user.updated {user_id, ...}  the record with the data's fields over it, version + 1;
//                                an unknown user is rejected
//   user.deleted {user_id}       no record
//
// The fold only depends on the events, so `sluice replay` of the stream
// rebuilds the records from scratch.

import * as kv from 'sluice:plugin/kv@0.1.0';

// A `failure` is thrown as `{ tag, val }`, the shape of the WIT variant.
const reject = (reason) => ({ tag: 'reject', val: reason });
const retry = (reason) => ({ tag: 'retry', val: { reason, delayMs: undefined } });

function load(key) {
  let stored;
  try {
    stored = kv.get(key);
  } catch (e) {
    throw retry(`kv get failed: ${e.payload ?? e}`); // Redis unreachable: may pass
  }
  return stored === undefined ? undefined : JSON.parse(new TextDecoder().decode(stored));
}

function save(key, record) {
  kv.set(key, new TextEncoder().encode(JSON.stringify(record)), undefined);
}

export const handler = {
  handle(event) {
    let data;
    try {
      data = JSON.parse(new TextDecoder().decode(event.data));
    } catch (e) {
      throw reject(`expected a JSON object: ${e.message}`);
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) throw reject('expected a JSON object');
    if (typeof data.user_id !== 'string') throw reject('the event has no user_id');
    const key = `user:${data.user_id}`;
    switch (event.eventType) {
      case 'user.created':
        save(key, { ...data, version: 1 });
        return;
      case 'user.updated': {
        const record = load(key);
        if (record === undefined) throw reject(`user ${data.user_id} is unknown (no user.created before this update)`);
        save(key, { ...record, ...data, version: (record.version ?? 0) + 1 });
        return;
      }
      case 'user.deleted':
        kv['delete'](key);
        return;
      default:
        throw reject(`profiles does not handle ${event.eventType} events`);
    }
  },
};
