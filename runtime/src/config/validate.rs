//! Turning a parsed [`RawConfig`] into a [`Config`]: every check in one place.

use super::error::{ConfigError, Location};
use super::handler::Handler;
use super::model::*;
use super::{Config, RedisSettings, StreamRule, StreamRules, base_dir, env, locate};
use crate::format::Format;
use crate::limits::{self, Limits, MAX_TOTAL_CONCURRENCY};
use crate::retry::{self, RetryPolicy};
use crate::schema::Schemas;
use crate::stream::order::OrderBy;
use crate::stream::retention::Retention;
use globset::{Glob, GlobSetBuilder};
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// Collects the context every check needs to point at the right line.
struct Checker<'a> {
    path: &'a Path,
    source: &'a str,
}

impl Checker<'_> {
    fn invalid(&self, key: &[&str], message: impl Into<String>) -> ConfigError {
        let offset = locate::offset_of(self.source, key);
        ConfigError::Invalid {
            at: Location::at(self.path, self.source, offset),
            key: key.join("."),
            message: message.into(),
        }
    }

    fn ensure(&self, ok: bool, key: &[&str], message: impl Into<String>) -> Result<(), ConfigError> {
        if ok { Ok(()) } else { Err(self.invalid(key, message)) }
    }

    fn name(&self, value: &str, key: &[&str], what: &str) -> Result<(), ConfigError> {
        let ok = !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        self.ensure(ok, key, format!("{what} must be non-empty and contain no spaces, got {value:?}"))
    }
}

/// Checks `raw` and applies every default.
pub fn resolve(path: &Path, source: &str, raw: RawConfig) -> Result<Config, ConfigError> {
    let c = Checker { path, source };
    let redis = redis(&c, &raw.redis)?;
    let plugins_dir = base_dir(path).join(raw.host.plugins.as_deref().unwrap_or(DEFAULT_PLUGINS_DIR));
    let ingress = ingress(&c, &raw.host)?;
    let consumer = match raw.host.consumer.clone() {
        Some(name) => {
            c.name(&name, &["host", "consumer"], "consumer")?;
            name
        }
        None => default_consumer(),
    };
    let claim_idle_ms = raw.host.claim_idle_ms.unwrap_or(DEFAULT_CLAIM_IDLE_MS);
    check_limits(&c, &raw.defaults, &["defaults"])?;
    let schemas = Arc::new(schemas(&c, &raw.schemas)?);
    let streams = Arc::new(stream_rules(&c, &raw.streams)?);
    let mut handlers = Vec::with_capacity(raw.handlers.len());
    for (name, h) in &raw.handlers {
        handlers.push(handler(&c, name, h, &raw.defaults, &plugins_dir, (&schemas, &streams), redis.cluster)?);
    }
    check_claim_idle(&c, claim_idle_ms, &handlers)?;
    check_shared_groups(&c, &handlers)?;
    check_total_concurrency(&c, &handlers)?;
    let source = Arc::from(source);
    let admin = raw.host.admin.as_deref().map(|a| admin_address(&c, a)).transpose()?;
    let admin_token = admin_token(&c, &raw.host, admin.is_some())?;
    let forget_consumers_after_ms = raw.host.forget_consumers_after_ms.unwrap_or(DEFAULT_FORGET_CONSUMERS_AFTER_MS);
    c.ensure(
        forget_consumers_after_ms >= claim_idle_ms,
        &["host", "forget_consumers_after_ms"],
        format!("must be at least claim_idle_ms ({claim_idle_ms}): a consumer is only forgotten once nothing of it can be claimed"),
    )?;
    Ok(Config {
        path: path.to_owned(),
        source,
        redis,
        plugins_dir,
        consumer,
        claim_idle_ms,
        admin,
        admin_token,
        ingress,
        handlers,
        schemas,
        streams,
        forget_consumers_after_ms,
    })
}

/// The error for `handler`'s plugin file not existing, pointing at its
/// `plugin` key.
pub fn plugin_missing(config: &Config, handler: &Handler) -> ConfigError {
    let c = Checker { path: &config.path, source: &config.source };
    let message = format!("plugin file {} does not exist", handler.plugin.display());
    c.invalid(&["handlers", &handler.name, "plugin"], message)
}

/// The error for `handler`'s plugin file not existing while its `fuel`
/// budget changes (see [`Config::plugin_gone_for_budget`]), pointing at its
/// `plugin` key.
pub fn plugin_gone_for_budget(config: &Config, handler: &Handler) -> ConfigError {
    let c = Checker { path: &config.path, source: &config.source };
    let change = match handler.limits.fuel {
        Some(_) => "giving the handler a fuel budget",
        None => "taking the handler's fuel budget away",
    };
    let message = format!(
        "plugin file {} does not exist, and {change} needs the plugin compiled again from it: restore the file, or leave the budget as it was (the loaded version keeps serving meanwhile)",
        handler.plugin.display()
    );
    c.invalid(&["handlers", &handler.name, "plugin"], message)
}

/// `[redis]`: the URL parses, TLS files go with `rediss://` and exist,
/// a client certificate comes with its key, a cluster has a seed URL,
/// sentinels come with the primary's name and not with a cluster.
fn redis(c: &Checker, raw: &RawRedis) -> Result<RedisSettings, ConfigError> {
    let key = |k: &'static str| ["redis", k];
    let url = raw.url.as_deref().map(|u| redis_url(c, u)).transpose()?;
    // Never echo the URL's password.
    let shown = url.as_deref().map(crate::stream::redact).unwrap_or_else(|| "the embedded Redis".to_owned());
    let tls = url.as_deref().is_some_and(|u| u.starts_with("rediss://"));
    let file = |k: &'static str, value: &Option<String>| -> Result<Option<PathBuf>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        let what = format!("{k} is for rediss:// URLs, and the url is {shown}");
        c.ensure(tls, &key(k), what)?;
        let path = base_dir(c.path).join(env::expand(value).map_err(|e| c.invalid(&key(k), e))?);
        match std::fs::read(&path) {
            Ok(_) => Ok(Some(path)),
            Err(e) => Err(c.invalid(&key(k), format!("cannot read {} (for {shown}): {e}", path.display()))),
        }
    };
    let sentinels = sentinels(c, raw, url.as_deref())?;
    let settings = RedisSettings {
        url,
        cluster: raw.cluster,
        sentinels,
        ca_file: file("ca_file", &raw.ca_file)?,
        cert_file: file("cert_file", &raw.cert_file)?,
        key_file: file("key_file", &raw.key_file)?,
    };
    let pair = match (&settings.cert_file, &settings.key_file) {
        (Some(_), None) => Some(("cert_file", "key_file")),
        (None, Some(_)) => Some(("key_file", "cert_file")),
        _ => None,
    };
    if let Some((given, missing)) = pair {
        let message = format!("{given} needs {missing}: set both for mutual TLS, or neither");
        return Err(c.invalid(&key(given), message));
    }
    if settings.cluster {
        let seed = settings.url.as_deref().is_some_and(|u| !u.starts_with("redis+unix") && !u.starts_with("unix"));
        c.ensure(
            seed,
            &key("cluster"),
            "cluster = true needs a url: redis:// or rediss:// of one node of the cluster",
        )?;
    }
    Ok(settings)
}

/// `[redis] sentinels`: each one a `redis://` or `rediss://` URL, all with
/// the same scheme and credentials (one set is used for all), at least one,
/// not with `cluster = true`, and `url` naming the primary by the name the
/// sentinels know it by (its host, with no port, written without
/// %-escapes).
fn sentinels(c: &Checker, raw: &RawRedis, url: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let Some(given) = &raw.sentinels else { return Ok(vec![]) };
    let key = ["redis", "sentinels"];
    c.ensure(!given.is_empty(), &key, "list at least one sentinel, e.g. [\"redis://10.0.0.1:26379\"]")?;
    c.ensure(
        !raw.cluster,
        &key,
        "sentinels and cluster = true exclude each other: a Redis Cluster fails over by itself",
    )?;
    let named = url.and_then(redis::parse_redis_url).filter(|u| matches!(u.scheme(), "redis" | "rediss"));
    let ok = named
        .as_ref()
        .is_some_and(|u| u.host_str().is_some_and(|h| !h.is_empty() && !h.contains('%')) && u.port().is_none());
    c.ensure(
        ok,
        if url.is_some() { &["redis", "url"] } else { &key },
        "with sentinels, url names the primary by the name the sentinels know it by, as its host, with no port \
         and no %-escapes (url = \"redis://user:password@mymaster\")",
    )?;
    let mut first = None;
    let mut checked = Vec::new();
    for (i, s) in given.iter().enumerate() {
        let s = env::expand(s).map_err(|e| c.invalid(&key, e))?;
        let parsed = redis::parse_redis_url(&s).filter(|u| matches!(u.scheme(), "redis" | "rediss"));
        let Some(parsed) = parsed.filter(|u| u.fragment().is_none()) else {
            return Err(c.invalid(&key, format!("sentinel {} is not a redis:// or rediss:// URL", i + 1)));
        };
        let this = (parsed.scheme().to_owned(), parsed.username().to_owned(), parsed.password().map(str::to_owned));
        let same = *first.get_or_insert_with(|| this.clone()) == this;
        let why = format!(
            "sentinel {} differs from the first in its scheme or user:password, and one set is used for all",
            i + 1
        );
        c.ensure(same, &key, why)?;
        checked.push(s);
    }
    Ok(checked)
}

fn redis_url(c: &Checker, url: &str) -> Result<String, ConfigError> {
    let key = ["redis", "url"];
    let url = env::expand(url).map_err(|e| c.invalid(&key, e))?;
    // Never echo the URL: it may hold a password.
    let parsed =
        redis::parse_redis_url(&url).ok_or_else(|| c.invalid(&key, "not a valid redis:// or rediss:// URL"))?;
    c.ensure(
        parsed.fragment().is_none(),
        &key,
        "a URL fragment (#insecure) is not accepted: TLS hostname verification is always on",
    )?;
    Ok(url)
}

/// `[host] ingress*`: an address; a token (required beyond loopback, never
/// empty); at least one stream glob. The token and streams need `ingress`.
fn ingress(c: &Checker, host: &RawHost) -> Result<Option<super::IngressSettings>, ConfigError> {
    let key = |k: &'static str| ["host", k];
    let Some(value) = &host.ingress else {
        let stray = if host.ingress_token.is_some() {
            Some("ingress_token")
        } else if host.ingress_streams.is_empty() {
            None
        } else {
            Some("ingress_streams")
        };
        return match stray {
            Some(k) => Err(c.invalid(&key(k), "needs [host] ingress (the address to listen on)")),
            None => Ok(None),
        };
    };
    let addr: std::net::SocketAddr = value.parse().map_err(|_| {
        c.invalid(&key("ingress"), format!("expected an address like \"127.0.0.1:8080\", got {value:?}"))
    })?;
    let token = host
        .ingress_token
        .as_deref()
        .map(|t| env::expand(t).map_err(|e| c.invalid(&key("ingress_token"), e)))
        .transpose()?;
    if let Some(t) = &token {
        c.ensure(!t.is_empty(), &key("ingress_token"), "is empty (is its environment variable set to nothing?)")?;
    }
    c.ensure(
        token.is_some() || addr.ip().is_loopback(),
        &key("ingress"),
        format!("{addr} is reachable beyond this machine: set ingress_token (a Bearer token every request must carry)"),
    )?;
    c.ensure(
        !host.ingress_streams.is_empty(),
        &key("ingress"),
        "list the streams it may write in ingress_streams (globs, e.g. [\"orders\", \"users.*\"])",
    )?;
    let mut allowed = GlobSetBuilder::new();
    for (i, pattern) in host.ingress_streams.iter().enumerate() {
        let at = ["host".to_owned(), "ingress_streams".to_owned(), i.to_string()];
        // Braces are hash tags in stream names ({shop}:orders), not glob
        // alternatives.
        let literal_braces = pattern.replace('{', "\\{").replace('}', "\\}");
        let glob = Glob::new(&literal_braces).map_err(|e| {
            c.invalid(&at.each_ref().map(String::as_str), format!("bad glob {pattern:?}: {}", e.kind()))
        })?;
        allowed.add(glob);
    }
    let allowed = allowed.build().map_err(|e| c.invalid(&key("ingress_streams"), e.to_string()))?;
    Ok(Some(super::IngressSettings { addr, token, streams: host.ingress_streams.clone(), allowed }))
}

/// `[host] admin_token`: only with `admin`, never empty.
fn admin_token(c: &Checker, host: &RawHost, admin: bool) -> Result<Option<String>, ConfigError> {
    let key = ["host", "admin_token"];
    let Some(value) = &host.admin_token else { return Ok(None) };
    c.ensure(admin, &key, "needs [host] admin (the address the dashboard listens on)")?;
    let token = env::expand(value).map_err(|e| c.invalid(&key, e))?;
    c.ensure(!token.is_empty(), &key, "is empty (is its environment variable set to nothing?)")?;
    Ok(Some(token))
}

fn admin_address(c: &Checker, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        c.invalid(&["host", "admin"], format!("expected an address like \"127.0.0.1:9464\", got {value:?}"))
    })
}

/// `hostname-pid`: unique per process, so two hosts never share pending entries.
fn default_consumer() -> String {
    let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "sluice".into());
    format!("{host}-{}", std::process::id())
}

fn check_claim_idle(c: &Checker, claim_idle_ms: u64, handlers: &[Handler]) -> Result<(), ConfigError> {
    let longest = handlers.iter().map(|h| h.limits.timeout.as_millis() as u64).max().unwrap_or(0);
    c.ensure(
        claim_idle_ms > longest,
        &["host", "claim_idle_ms"],
        format!("must be longer than every handler's timeout_ms (the longest is {longest}), or live events would be taken from running hosts"),
    )
}

/// Two handlers reading one stream through one group would split its events
/// between them, and each would ack the other's events as unwanted.
fn check_shared_groups(c: &Checker, handlers: &[Handler]) -> Result<(), ConfigError> {
    let mut seen: std::collections::HashMap<(&str, &str), &str> = std::collections::HashMap::new();
    for h in handlers {
        for s in &h.streams {
            if let Some(other) = seen.insert((s, &h.group), &h.name) {
                let message = format!(
                    "handlers {other} and {} both read stream {s} through group {}; give one its own group",
                    h.name, h.group
                );
                return Err(c.invalid(&["handlers", &h.name, "group"], message));
            }
        }
    }
    Ok(())
}

/// Every handler's events in flight must fit in the host's instance pool.
fn check_total_concurrency(c: &Checker, handlers: &[Handler]) -> Result<(), ConfigError> {
    let total: usize = handlers.iter().map(|h| h.limits.concurrency).sum();
    c.ensure(
        total <= MAX_TOTAL_CONCURRENCY,
        &["handlers"],
        format!(
            "the handlers' concurrency adds up to {total}; the host runs at most {MAX_TOTAL_CONCURRENCY} events at once"
        ),
    )
}

/// Checks every limit and retry setting of `l`, a table at `table`.
fn check_limits(c: &Checker, l: &RawLimits, table: &[&str]) -> Result<(), ConfigError> {
    let settings = [
        (&limits::TIMEOUT_MS, l.timeout_ms),
        (&limits::MEMORY_MB, l.memory_mb),
        (&retry::MAX_ATTEMPTS, l.max_attempts.map(u64::from)),
        (&retry::BACKOFF_MS, l.backoff_ms),
        (&limits::FUEL, l.fuel),
        (&limits::CONCURRENCY, l.concurrency.map(u64::from)),
    ];
    for (setting, value) in settings {
        if let Some(v) = value {
            setting.check(v).map_err(|e| c.invalid(&[table, &[setting.key]].concat(), e))?;
        }
    }
    Ok(())
}

fn handler(
    c: &Checker,
    name: &str,
    h: &RawHandler,
    defaults: &RawLimits,
    plugins_dir: &Path,
    (schemas, streams): (&Arc<Schemas>, &Arc<StreamRules>),
    cluster: bool,
) -> Result<Handler, ConfigError> {
    let key = |k: &'static str| ["handlers", name, k];
    c.name(name, &["handlers", name], "a handler name")?;
    // (Its key-value keys are `sluice:kv:<handler>:<key>`: handlers "a" and
    // "a:b" would share "a:b:x", as keys "b:x" and "x".)
    let colon = format!(
        "a handler name must not contain ':', got {name:?} (it separates the parts of the handler's key-value keys)"
    );
    c.ensure(!name.contains(':'), &["handlers", name], colon)?;
    check_limits(c, &h.limits(), &["handlers", name])?;
    let l = h.limits().or(defaults);
    let plugin = plugins_dir.join(&h.plugin);
    check_names(c, name, h)?;
    let events = h.events.clone().unwrap_or_else(|| vec!["*".to_owned()]);
    let event_filter = globs(c, name, &events)?;
    let group = h.group.clone().unwrap_or_else(|| name.to_owned());
    c.name(&group, &key("group"), "group")?;
    // In a cluster, the handler's own keys share its first stream's slot, so
    // that one script can commit its deliveries (docs/delivery.md).
    let tag = cluster.then(|| crate::stream::slot::tag_for(&h.streams[0]));
    let order_by = h.order_by.as_deref().map(OrderBy::parse).transpose().map_err(|e| c.invalid(&key("order_by"), e))?;
    // A key of the data is read from the CloudEvent's data on a cloudevents
    // stream: one handler's streams must agree on which.
    let cloudevents = |s: &&String| *streams.format(s) == Format::CloudEvents;
    if let Some(OrderBy::Data(k)) = &order_by
        && let (Some(ce), Some(other)) =
            (h.streams.iter().find(cloudevents), h.streams.iter().find(|s| !cloudevents(s)))
    {
        let why = format!(
            "\"data.{k}\" would be read from the CloudEvent's data on stream {ce:?} (format cloudevents) but from the entry's data on {other:?}: a handler ordering by a key of the data consumes streams of one kind"
        );
        return Err(c.invalid(&key("order_by"), why));
    }
    Ok(Handler {
        inbox: crate::dead_letter::inbox(name, tag.as_deref()),
        kv_prefix: crate::wasm::kv_prefix(name, tag.as_deref()),
        cluster,
        name: name.to_owned(),
        plugin,
        streams: h.streams.clone(),
        events,
        event_filter,
        publish: h.publish.clone(),
        group,
        dead_letter: h.dead_letter.clone(),
        limits: Limits::from_settings(l.timeout_ms, l.memory_mb, l.fuel, l.concurrency),
        retry: RetryPolicy::from_settings(l.max_attempts, l.backoff_ms),
        config: handler_config(c, name, &h.config)?,
        http: h.http.clone(),
        isolation: h.isolation,
        order_by,
        schemas: schemas.clone(),
        formats: streams.clone(),
    })
}

/// The streams a handler names (read, published to, dead-lettered into) and
/// its HTTP hosts are well formed.
fn check_names(c: &Checker, name: &str, h: &RawHandler) -> Result<(), ConfigError> {
    let key = |k: &'static str| ["handlers", name, k];
    let at = |k: &'static str, i: usize| ["handlers".to_owned(), name.to_owned(), k.to_owned(), i.to_string()];
    c.ensure(!h.streams.is_empty(), &key("streams"), "list at least one stream to consume")?;
    for (k, list) in [("streams", &h.streams), ("publish", &h.publish)] {
        for (i, s) in list.iter().enumerate() {
            let path = at(k, i);
            c.name(s, &path.each_ref().map(String::as_str), "a stream name")?;
        }
    }
    for (i, host) in h.http.iter().enumerate() {
        let ok = !host.is_empty() && !host.contains(['/', ' ', '*']);
        let path = at("http", i);
        c.ensure(ok, &path.each_ref().map(String::as_str), format!("expected a host or host:port, got {host:?}"))?;
    }
    if let Some(dl) = &h.dead_letter {
        c.name(dl, &key("dead_letter"), "dead_letter")?;
        c.ensure(!h.streams.contains(dl), &key("dead_letter"), "must not be one of the streams the handler consumes")?;
    }
    Ok(())
}

/// The handler's config table with `${ENV}` expanded; an unset variable is
/// an error naming the key.
fn handler_config(
    c: &Checker,
    name: &str,
    raw: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    raw.iter()
        .map(|(k, v)| {
            let value = env::expand(v).map_err(|e| c.invalid(&["handlers", name, "config", k], e))?;
            Ok((k.clone(), value))
        })
        .collect()
}

/// `[streams."NAME"]`: globs compiled, bounds checked.
fn stream_rules(c: &Checker, raw: &BTreeMap<String, RawStream>) -> Result<StreamRules, ConfigError> {
    let mut rules = Vec::with_capacity(raw.len());
    for (pattern, s) in raw {
        let key = |k: &'static str| ["streams", pattern.as_str(), k];
        let glob = Glob::new(pattern)
            .map_err(|e| c.invalid(&["streams", pattern], format!("bad glob {pattern:?}: {}", e.kind())))?;
        if let Some(n) = s.max_len {
            c.ensure(n >= 1, &key("max_len"), "must be at least 1 (leave it out to keep every entry)")?;
        }
        if let Some(ms) = s.max_age_ms {
            c.ensure(ms >= 1, &key("max_age_ms"), "must be at least 1 (leave it out to keep entries of any age)")?;
        }
        let retention = Retention { max_len: s.max_len, max_age: s.max_age_ms.map(std::time::Duration::from_millis) };
        let format = match (s.format, &s.type_key) {
            (Some(RawFormat::LeanMq), None) => Some(Format::leanmq()),
            (Some(RawFormat::LeanMq), Some(type_key)) => {
                c.ensure(
                    !type_key.is_empty(),
                    &key("type_key"),
                    "must name the message key that holds the event type",
                )?;
                Some(Format::LeanMq { type_key: type_key.clone() })
            }
            (_, Some(_)) => {
                return Err(c.invalid(
                    &key("type_key"),
                    "applies only with format = \"leanmq\" (where the type is a key of the message)",
                ));
            }
            (Some(RawFormat::CloudEvents), None) => Some(Format::CloudEvents),
            (Some(RawFormat::Sluice), None) => Some(Format::Sluice),
            (None, None) => None,
        };
        let matcher = glob.compile_matcher();
        rules.push(StreamRule { pattern: pattern.clone(), matcher, retention, format });
    }
    Ok(StreamRules::new(rules))
}

/// `[schemas]`, each file read and compiled against the config's folder.
fn schemas(c: &Checker, lines: &BTreeMap<String, String>) -> Result<Schemas, ConfigError> {
    Schemas::compile(base_dir(c.path), lines).map_err(|e| c.invalid(&["schemas", &e.pattern], e.message))
}

fn globs(c: &Checker, name: &str, events: &[String]) -> Result<globset::GlobSet, ConfigError> {
    let mut set = GlobSetBuilder::new();
    for (i, pattern) in events.iter().enumerate() {
        let glob = Glob::new(pattern).map_err(|e| {
            c.invalid(&["handlers", name, "events", &i.to_string()], format!("bad glob {pattern:?}: {}", e.kind()))
        })?;
        set.add(glob);
    }
    set.build().map_err(|e| c.invalid(&["handlers", name, "events"], e.to_string()))
}
