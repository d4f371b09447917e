//! What Sluice's HTTP listeners (the ingress, and the admin listener with
//! its dashboard) share: Bearer tokens, `%XX` path segments, and which
//! `Host` a loopback listener answers.

use http::HeaderMap;
use std::net::SocketAddr;

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// `a == b` in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `%XX` escapes decoded (a stream or handler name may hold `/` or `:`);
/// `None` if malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a listener on `local` should answer a request for `host` (its
/// `Host` header). A listener on loopback answers only loopback names
/// (`localhost`, `127.0.0.1`, `[::1]`, any port): a web page whose domain
/// was rebound to 127.0.0.1 (DNS rebinding) gets nothing from it. One bound
/// beyond loopback was exposed on purpose and answers any host.
pub fn host_allowed(local: SocketAddr, host: Option<&str>) -> bool {
    if !local.ip().is_loopback() {
        return true;
    }
    let Some(host) = host else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3cre"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"", b"x"));
    }

    #[test]
    fn escapes_decode() {
        assert_eq!(percent_decode("a%2Fb%3Ac").as_deref(), Some("a/b:c"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%FF"), None, "not UTF-8");
    }

    #[test]
    fn a_loopback_listener_answers_loopback_names_only() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        for ok in ["127.0.0.1:9464", "localhost:9464", "LOCALHOST", "[::1]:9464", "127.0.0.2"] {
            assert!(host_allowed(local, Some(ok)), "{ok}");
        }
        for refused in ["evil.example:9464", "evil.example", "127.0.0.1.evil.example", ""] {
            assert!(!host_allowed(local, Some(refused)), "{refused}");
        }
        assert!(!host_allowed(local, None));
        assert!(host_allowed("0.0.0.0:9464".parse().unwrap(), Some("sluice.internal:9464")));
    }
}
