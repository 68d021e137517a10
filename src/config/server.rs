//! `[server]`: how the HTTP listener treats connections (TLS, trusted proxies, timeouts,
//! connection and event-stream limits).

use serde::{Deserialize, Serialize};

/// How the HTTP listener treats connections: TLS, the proxies in front of it, and the limits
/// that keep one client from holding the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// PEM certificate chain and private key: with both, `serve` speaks HTTPS itself
    /// (`CORRAL_SERVER__TLS_CERT`, `CORRAL_SERVER__TLS_KEY`).
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    /// Address ranges of reverse proxies (e.g. `10.0.0.0/8`): for connections from them, the
    /// client is read from `X-Forwarded-For` (login throttling, `"cidr": "caller"`). Empty:
    /// the header is ignored, as any client could write it.
    pub trusted_proxies: Vec<String>,
    /// Longest a client may take to send a request's headers, from connecting or from its
    /// previous answer (an idle connection is closed after it).
    pub header_timeout_secs: u64,
    /// Longest a request may take until its answer starts (answered `503` past it); `?wait=`
    /// adds the longest wait, and an event stream goes on once it has started.
    pub request_timeout_secs: u64,
    /// Connections served at once; further ones are answered `503` and closed.
    pub max_connections: usize,
    /// Event streams (`/v1/jobs/{id}/events`) open at once, in all and per caller; further
    /// ones are answered `429`.
    pub max_event_streams: usize,
    pub max_event_streams_per_caller: usize,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            header_timeout_secs: 30,
            request_timeout_secs: 60,
            max_connections: 1024,
            max_event_streams: 256,
            max_event_streams_per_caller: 16,
        }
    }
}

impl ServerSettings {
    /// The trusted proxies' ranges, or what is wrong with them.
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|cidr| {
                let cidr = cidr.trim();
                cidr.parse::<ipnet::IpNet>()
                    .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        format!(
                            "server.trusted_proxies: '{cidr}' is not an address range; expected \
                             e.g. 10.0.0.0/8 or fd00::/8"
                        )
                    })
            })
            .collect()
    }

    pub(super) fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = self.trusted_proxies() {
            problems.push(problem);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(
                "server.tls_cert and server.tls_key go together: set both or neither".to_string(),
            );
        }
        for (name, value) in [
            ("header_timeout_secs", self.header_timeout_secs as usize),
            ("request_timeout_secs", self.request_timeout_secs as usize),
            ("max_connections", self.max_connections),
            ("max_event_streams", self.max_event_streams),
            ("max_event_streams_per_caller", self.max_event_streams_per_caller),
        ] {
            if value == 0 {
                problems.push(format!("server.{name}: must be at least 1"));
            }
        }
        problems
    }
}
