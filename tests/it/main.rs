//! Sluice's integration tests: one binary, every test against a real
//! `redis-server` it starts on a free port and real plugins from `plugins/`.

// Starts redis-server, builds plugins, writes configs, runs hosts, polls.
mod support;

// The shipped config parses; bad configs name file, line, key and reason.
mod config;
// Outcomes of one delivery: ok, retry, reject, trap, timeout, memory; dead-letter fields.
mod delivery;
// Fan-out across handlers and event-type filters.
mod routing;
// Publishes happen only on success, atomically with the ack.
mod publishing;
// Restarts, SIGKILL mid-batch, a second host claiming a dead host's events, shutdown.
mod recovery;
// Bounded streams trimmed without losing what a group needs; entries others removed unread told; idle consumers forgotten.
mod upkeep;
// The `sluice` binary: check, publish, the embedded Redis.
mod cli;
// `sluice invoke`: one delivery offline; its verdict is what `run` would do.
mod invoke;
// `sluice new`: each language's project builds and runs.
mod scaffold;
// `[schemas]`: invalid events refused on publish, dead-lettered before the plugin runs.
mod schemas;
// Operating: dead-letter list/show/redrive/purge, replay, status.
mod operate;
// The admin listener: metrics, health, readiness.
mod admin;
// The dashboard in a real headless Chromium, and its JSON API.
mod dashboard;
// Hot reload of plugins and config while serving.
mod reload;
// The compiled-component cache.
mod cache;
// Key-value state and per-handler config values.
mod state;
// Hostile plugins are contained; their neighbours keep working.
mod hostile;
// Outbound HTTP: allow-listed, signed webhooks; the library's lines in the event span.
mod webhook;
// Python and JavaScript handlers; instance reuse.
mod languages;
// TLS to Redis: a private CA, mutual TLS, and an error line for each mistake.
mod tls;
// A Redis ACL user with the least Sluice needs runs the whole path.
mod acl;
// Redis Cluster: the demo chain, a redrive, a slot moved and a failover under load.
mod cluster;
// Redis Sentinel: a host follows a failover and a crash of its primary; ACL users, TLS, three sentinels.
mod sentinel;
// order_by: one key at a time in stream order, across retries, dead letters, hosts and a kill.
mod ordering;
// Request/reply: `sluice request`, `host.reply`, error replies, timeouts, reply streams' TTL.
mod request;
// The HTTP ingress: events and requests over real HTTP, and every bad input.
mod ingress;
// The seed documents' flows, run with the example plugins (docs/examples.md).
mod examples;
// The fault audit, short: kills, a pause, Redis restarts, network faults, a failover, two hosts.
mod faults;
// Stream formats: LeanMQ and CloudEvents (Dapr) entries, with the real Python libraries.
mod formats;
// Spin Redis-trigger components run unchanged.
mod spin;
