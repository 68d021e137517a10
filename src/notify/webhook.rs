//! Webhooks: a signed JSON POST per delivery, to addresses checked against an SSRF guard.
//!
//! The body is the event as JSON. `X-Corral-Signature: t=<unix seconds>,v1=<hex>` carries the
//! HMAC-SHA256, keyed with the subscription's secret, of `"<t>.<raw body>"`: a receiver
//! recomputes it, compares in constant time, and refuses old timestamps to stop replays.
//! `X-Corral-Delivery` is stable across retries, so a receiver can drop duplicates.
//!
//! Unless `notify.webhook_allow_private` is set, a URL whose host is, or resolves to, a
//! loopback, private, link-local or otherwise non-public address is refused: when the
//! subscription is made, and again at every send (the resolver itself drops such addresses,
//! so a name that changes its answer later cannot get through either). Redirects are not
//! followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;

use crate::domain::Notification;

/// Sends webhooks through one HTTP client.
pub struct WebhookSender {
    client: reqwest::Client,
    allow_private: bool,
}

impl WebhookSender {
    pub fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<WebhookSender> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(crate::tls_client_config()?)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .build()?;
        Ok(WebhookSender { client, allow_private })
    }

    /// Posts `notification` to `url`, signed with `secret`; an error says why it did not
    /// arrive.
    pub async fn send(
        &self,
        url: &str,
        secret: &str,
        delivery_id: &str,
        notification: &Notification,
    ) -> Result<(), String> {
        let url = check_url(url, self.allow_private).await?;
        let body = serde_json::to_vec(notification).map_err(|err| err.to_string())?;
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("x-corral-delivery", delivery_id)
            .header("x-corral-event", &notification.event)
            .header("x-corral-signature", signature(secret, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|err| describe(&err))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("the receiver answered {status}")) }
    }
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("t={timestamp},v1={hex}")
}

/// The URL, if it is an http(s) URL a webhook may be sent to: its host must resolve, and
/// (unless `allow_private`) only to public addresses.
pub async fn check_url(url: &str, allow_private: bool) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|err| format!("'{url}' is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("'{url}' must use http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("webhook URLs may not carry credentials; use the signing secret".to_string());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(name)) => name.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("'{url}' has no host")),
    };
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|err| format!("cannot resolve '{host}': {err}"))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("'{host}' resolves to no address"));
    }
    if !allow_private && let Some(private) = addresses.iter().find(|addr| !is_public(addr.ip())) {
        return Err(format!(
            "'{host}' resolves to {}, a loopback, private or link-local address; webhooks only \
             go to public addresses unless CORRAL_WEBHOOK_ALLOW_PRIVATE=true",
            private.ip()
        ));
    }
    Ok(parsed)
}

/// Whether `ip` is an ordinary public address (not loopback, private, link-local, shared,
/// multicast, documentation or unspecified).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240)
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        }
    }
}

/// A resolver that drops non-public addresses, so that a name cannot lead a send to one.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                found.into_iter().filter(|addr| allow_private || is_public(addr.ip())).collect();
            if allowed.is_empty() {
                let message = format!("'{}' has no public address", name.as_str());
                return Err(Box::<dyn std::error::Error + Send + Sync>::from(message));
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The whole chain of a request error, which reqwest keeps in its sources.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() { "timed out".to_string() } else { crate::error_chain(err) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        let private = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ];
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Python: hmac.new(b's3cret', b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        let expected =
            "t=1700000000,v1=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940";
        assert_eq!(signature("s3cret", 1_700_000_000, br#"{"a":1}"#), expected);
        assert_ne!(signature("other", 1_700_000_000, br#"{"a":1}"#), expected);
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_credentials_and_private_targets() {
        let refused = [
            ("ftp://example.com/hook", "http or https"),
            ("http://user:pw@example.com/hook", "credentials"),
            ("http://127.0.0.1:9/hook", "loopback, private or link-local"),
            ("http://169.254.169.254/latest/meta-data", "loopback, private or link-local"),
            ("http://[::1]:9/hook", "loopback, private or link-local"),
            ("http://localhost:9/hook", "loopback, private or link-local"),
            ("not a url", "is not a URL"),
        ];
        for (url, reason) in refused {
            let err = check_url(url, false).await.unwrap_err();
            assert!(err.contains(reason), "{url}: {err}");
        }
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }
}
