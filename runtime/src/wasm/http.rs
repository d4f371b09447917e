//! Outbound HTTP (`wasi:http/outgoing-handler`) for handlers granted it: a
//! request goes out only if its host is in the handler's `http` allow-list;
//! anything else is refused with `HTTP-request-denied` before a connection
//! is made.

use crate::logging::event_line;
use std::future::Future;
use std::sync::Arc;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The hosts one handler may call: `host` (any port) or `host:port`.
#[derive(Debug, Clone, Default)]
pub struct HttpGrant {
    allowed: Arc<Vec<String>>,
}

impl HttpGrant {
    /// A grant for `allowed` (as written in `http = [...]`).
    pub fn new(allowed: Vec<String>) -> HttpGrant {
        HttpGrant { allowed: Arc::new(allowed) }
    }

    /// Whether a request to `uri` is allowed.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let with_port = uri.port_u16().map(|p| format!("{host}:{p}"));
        self.allowed.iter().any(|a| a.eq_ignore_ascii_case(host) || Some(a) == with_port.as_ref())
    }
}

type Sent = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>), Error>;

impl WasiHttpHooks for HttpGrant {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        if !self.allows(request.uri()) {
            event_line!(WARN, target: "sluice::plugin", uri = %request.uri(), "outbound HTTP denied: host not in the handler's http allow-list");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // wasmtime-wasi-http logs its own warnings about the request (a
        // refused connection, a TLS error) while the delivery runs: in the
        // event's span, which the network's cost dwarfs.
        crate::logging::open_event_span();
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_hosts_pass() {
        let grant = HttpGrant::new(vec!["api.example.com".into(), "127.0.0.1:8080".into()]);
        let ok = |u: &str| grant.allows(&u.parse().unwrap());
        assert!(ok("https://api.example.com/hooks"));
        assert!(ok("https://API.example.com:8443/hooks"));
        assert!(ok("http://127.0.0.1:8080/x"));
        assert!(!ok("http://127.0.0.1:8081/x"));
        assert!(!ok("https://api.example.com.evil.net/"));
        assert!(!ok("https://evil.net/?api.example.com"));
        assert!(!HttpGrant::default().allows(&"https://api.example.com/".parse().unwrap()));
    }
}
