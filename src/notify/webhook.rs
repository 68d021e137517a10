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
//! so a name that changes its answer later cannot get through either). An IPv6 address that
//! embeds an IPv4 one (mapped, compatible, NAT64, 6to4) is judged by the IPv4 address it
//! embeds. Redirects are not followed, and no proxy from the environment (`HTTP_PROXY`,
//! `ALL_PROXY`, ...) is used: a proxy would resolve the name itself, past the guard. Refusals
//! name the host but never the addresses it resolved to, which are facts of the internal
//! network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
            // A proxy would resolve the host itself, bypassing `GuardedResolver`.
            .no_proxy()
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
    let addresses: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
        Ok(found) => found.collect(),
        Err(err) if allow_private => return Err(format!("cannot resolve '{host}': {err}")),
        Err(_) => Vec::new(),
    };
    if allow_private && addresses.is_empty() {
        return Err(format!("'{host}' resolves to no address"));
    }
    // One message whether the name is unknown, internal, or partly internal: which internal
    // names exist, and what they resolve to, are facts of the network an operator must not
    // learn from here.
    if !allow_private && (addresses.is_empty() || !addresses.iter().all(|a| is_public(a.ip()))) {
        return Err(format!(
            "webhook host '{host}' does not resolve to public addresses only; webhooks only go \
             to public addresses unless CORRAL_WEBHOOK_ALLOW_PRIVATE=true"
        ));
    }
    Ok(parsed)
}

/// Whether `ip` is an ordinary public address a webhook may go to.
///
/// IPv4: not loopback, private, link-local, shared (CGNAT), multicast, broadcast, reserved,
/// documentation, benchmarking, IETF-assigned or unspecified. IPv6: an address that embeds an
/// IPv4 one (see `embedded_ipv4`) is judged by that; otherwise only global unicast
/// (`2000::/3`) counts, which leaves out loopback, unspecified, unique local (`fc00::/7`),
/// link-local (`fe80::/10`), site-local (`fec0::/10`), multicast, discard-only (`100::/64`) and
/// the local-use NAT64 prefix (`64:ff9b:1::/48`, whose embedded IPv4 sits where its operator
/// chose), less the non-public ranges inside it: IETF protocol assignments (`2001::/23`, Teredo
/// `2001::/32` among them) and documentation (`2001:db8::/32`, `3fff::/20`).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (RFC 6598)
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (b == 18 || b == 19)) // benchmarking
                || a >= 240) // reserved
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = embedded_ipv4(ip) {
                return is_public(IpAddr::V4(v4));
            }
            let [a, b, ..] = ip.segments();
            (a & 0xe000) == 0x2000 // global unicast, 2000::/3
                && !(a == 0x2001 && b < 0x0200) // IETF protocol assignments, Teredo among them
                && !(a == 0x2001 && b == 0x0db8) // documentation
                && !(a == 0x3fff && b < 0x1000) // documentation (RFC 9637)
        }
    }
}

/// The IPv4 address that `ip` embeds and that a connection to it reaches: IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (`::` and `::1` among them, as `0.0.0.0` and
/// `0.0.0.1`), NAT64 `64:ff9b::a.b.c.d` (RFC 6052) in the last 32 bits; 6to4
/// `2002:aabb:ccdd::/48` (RFC 3056) in bits 16 to 48.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    match ip.segments() {
        [0, 0, 0, 0, 0, 0xffff, _, _]
        | [0, 0, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(Ipv4Addr::new(o[12], o[13], o[14], o[15])),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
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
                // The addresses found stay out of the message: they are internal network facts.
                let message =
                    format!("webhook host '{}' resolves to no public address", name.as_str());
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
    fn ipv6_addresses_that_embed_ipv4_are_judged_by_it() {
        let private = [
            "64:ff9b::7f00:1",          // NAT64 of 127.0.0.1
            "64:ff9b::169.254.169.254", // NAT64 of the metadata service
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",      // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",  // 6to4 of 169.254.169.254
            "2002:c0a8:101:1::1", // 6to4 of 192.168.1.1
            "::127.0.0.1",        // IPv4-compatible
            "::10.0.0.1",
            "::ffff:10.0.0.1", // IPv4-mapped
            "::ffff:100.64.0.1",
        ];
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["64:ff9b::8.8.8.8", "2002:808:808::1", "::8.8.8.8", "::ffff:93.184.216.34"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn ipv6_outside_global_unicast_or_in_its_special_ranges_is_not_public() {
        let private = [
            "fec0::1",                              // site-local
            "feff::1",                              // site-local
            "fc00::1",                              // unique local
            "fe80::1",                              // link-local
            "ff02::1",                              // multicast
            "100::1",                               // discard-only
            "64:ff9b:1::808:808",                   // local-use NAT64, whatever its tail
            "64:ff9b:0:0:1::1",                     // not the /96 NAT64 form
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "2001::1",
            "2001:2::1",   // benchmarking
            "2001:db8::1", // documentation
            "3fff::1",     // documentation (RFC 9637)
            "5f00::1",     // SRv6 SIDs, outside 2000::/3
        ];
        for ip in private {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in ["2606:4700::1111", "2a00:1450:4001:80b::200e", "2400:cb00::1", "2a01:4f8::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[tokio::test]
    async fn webhooks_use_no_proxy_from_the_environment() {
        // reqwest's `Debug` for a client lists `proxies` when it has any; without `.no_proxy()`
        // it always holds the system (environment) proxy matcher, set or not.
        let sender = WebhookSender::new(Duration::from_secs(5), false).unwrap();
        let client = format!("{:?}", sender.client);
        assert!(!client.contains("proxies"), "the webhook client may use a proxy: {client}");
    }

    #[tokio::test]
    async fn refusals_do_not_name_the_addresses_a_host_resolves_to() {
        let err = check_url("http://localhost:9/hook", false).await.unwrap_err();
        assert!(
            err.contains("webhook host 'localhost' does not resolve to public addresses only"),
            "{err}"
        );
        assert!(!err.contains("127.0.0.1") && !err.contains("::1"), "{err}");
        // A name that does not exist is answered the same: no oracle for internal names.
        let unknown = check_url("http://no-such-host.invalid/hook", false).await.unwrap_err();
        assert_eq!(unknown, err.replace("'localhost'", "'no-such-host.invalid'"));

        let resolver = GuardedResolver { allow_private: false };
        let err = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost has no public address")
            .to_string();
        assert!(err.contains("resolves to no public address"), "{err}");
        assert!(!err.contains("127.0.0.1") && !err.contains("::1"), "{err}");

        let open = GuardedResolver { allow_private: true };
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
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
            ("http://127.0.0.1:9/hook", "public addresses only"),
            ("http://169.254.169.254/latest/meta-data", "public addresses only"),
            ("http://[::1]:9/hook", "public addresses only"),
            ("http://localhost:9/hook", "public addresses only"),
            ("http://[::ffff:127.0.0.1]:9/hook", "public addresses only"),
            ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data", "public addresses only"),
            ("http://[2002:a9fe:a9fe::]/latest/meta-data", "public addresses only"),
            ("http://[fec0::1]:9/hook", "public addresses only"),
            ("not a url", "is not a URL"),
        ];
        for (url, reason) in refused {
            let err = check_url(url, false).await.unwrap_err();
            assert!(err.contains(reason), "{url}: {err}");
        }
        assert!(check_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[tokio::test]
    async fn public_urls_are_accepted_where_their_private_neighbours_are_refused() {
        // Address literals, so that no DNS answer decides the outcome.
        let public = [
            "https://93.184.216.34/x",
            "http://8.8.8.8:8080/hooks/corral?team=ops",
            "https://[2606:4700::1111]/x",
            "https://[2a00:1450:4001:80b::200e]:8443/hook",
        ];
        for url in public {
            let accepted = check_url(url, false).await.unwrap_or_else(|err| panic!("{url}: {err}"));
            assert_eq!(accepted.as_str(), url);
        }
        let private = [
            "https://10.0.0.1/x",
            "http://127.0.0.1:8080/hooks/corral?team=ops",
            "https://[fd00::1111]/x",
            "https://[fe80::200e]:8443/hook",
        ];
        for url in private {
            let err = check_url(url, false).await.unwrap_err();
            assert!(err.contains("public addresses only"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn the_client_connects_to_no_private_address_whatever_the_url_check_passed() {
        // Arrange: a listener on loopback that takes connections and never answers; a name
        // that resolves to loopback, as a name checked while it resolved publicly may by the
        // time of a send.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://localhost:{}/hook", listener.local_addr().unwrap().port());
        let guarded = WebhookSender::new(Duration::from_secs(1), false).unwrap();
        let open = WebhookSender::new(Duration::from_secs(1), true).unwrap();

        // Act: the guarded sender's own client, past any URL check.
        let refused = guarded.client.post(url.as_str()).send().await.unwrap_err();

        // Assert: its resolver refused the name, and no connection reached the listener.
        let err = crate::error_chain(&refused);
        assert!(err.contains("webhook host 'localhost' resolves to no public address"), "{err}");
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the guarded client connected: {accepted:?}"
        );
        // The listener is reachable: a client that allows private addresses gets there (and
        // times out waiting for an answer).
        let timed_out = open.client.post(url.as_str()).send().await.unwrap_err();
        assert!(timed_out.is_timeout(), "{timed_out}");
        assert!(listener.accept().is_ok(), "the open client did not reach the listener");
    }
}
