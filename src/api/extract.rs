//! Request extractors with the API's error envelope: JSON bodies whose errors name the field at
//! fault, query strings parsed strictly (unknown or repeated parameters are refused), and the
//! client's address (`ClientAddress`, through trusted proxies only).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::api::error::{ApiError, FieldError};

/// The address of the client a request comes from: the connection's peer, or, when the peer
/// is a trusted proxy (`server.trusted_proxies`), the last address in `X-Forwarded-For` that
/// is not one of the trusted proxies. A client can write the header, but only the addresses
/// that trusted proxies appended are believed.
pub struct ClientAddress(pub std::net::IpAddr);

impl FromRequestParts<crate::api::ApiContext> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        ctx: &crate::api::ApiContext,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip())
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("the connection's address is not known"))
            })?;
        Ok(ClientAddress(client_address(peer, &parts.headers, &ctx.trusted_proxies)))
    }
}

/// See `ClientAddress`.
pub fn client_address(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let is_trusted = |ip: &std::net::IpAddr| {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, std::net::IpAddr::V4),
            v4 => *v4,
        };
        trusted.iter().any(|net| net.contains(&ip))
    };
    if !is_trusted(&peer) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, as one list, read from the nearest hop back:
    // the first hop that is not a trusted proxy is the client, and what lies before it (which
    // the client may have written) is never read.
    // Split as bytes, so that a byte the client wrote cannot spoil the hops appended after it.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        // A hop a trusted proxy wrote that cannot be read ends the walk at that proxy.
        let hop = std::str::from_utf8(hop).ok().map(str::trim);
        let Some(ip) = hop.and_then(forwarded_address) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` hop: an address, `ipv4:port`, or `[ipv6]:port`.
fn forwarded_address(hop: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    hop.parse::<std::net::SocketAddr>().ok().map(|address| address.ip())
}

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A JSON body. Unparsable JSON is a 400; well-formed JSON of the wrong shape (wrong type,
/// unknown field) is a 422 naming the field by its path.
pub struct ValidJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let is_json = content_type.split(';').next().is_some_and(|mime| {
            let mime = mime.trim();
            mime == "application/json" || mime.ends_with("+json")
        });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(format!(
                "expected Content-Type: application/json, got '{content_type}'"
            )));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(MAX_BODY_BYTES)
            } else {
                ApiError::bad_request(format!("could not read the request body: {rejection}"))
            }
        })?;
        parse_json(&bytes).map(ValidJson)
    }
}

/// A JSON body as `T`. A number without a fractional part is an integer wherever it is written
/// (`2.0` as `2`, `1e2` as `100`, below 2^53, where a float stops being exact), as JSON Schema
/// counts it, so that what the OpenAPI document calls an integer is read as one. The body is
/// read as it streams, once; only a body refused for a float where an integer goes is read a
/// second time, with its whole floats written as integers.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match deserialize(bytes) {
        Err((_, err)) if err.to_string().starts_with("invalid type: floating point") => {
            deserialize(&whole_numbers_as_integers(bytes))
        }
        read => read,
    }
    .map_err(|(path, err)| match err.classify() {
        serde_json::error::Category::Data => {
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::Validation(vec![FieldError::new(field, strip_position(&err))])
        }
        _ => ApiError::bad_request(format!("the body is not valid JSON: {err}")),
    })
}

fn deserialize<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, (String, serde_json::Error)> {
    let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|err| (err.path().to_string(), err.into_inner()))
}

/// `json` with each number that has a fraction or an exponent but is a whole number below 2^53
/// (where every float is still exact) written as an integer; strings are copied as they are.
/// Outside strings, JSON has digits in numbers only.
fn whole_numbers_as_integers(json: &[u8]) -> Vec<u8> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let mut out = Vec::with_capacity(json.len());
    let (mut at, mut in_string) = (0, false);
    while at < json.len() {
        let byte = json[at];
        if in_string {
            let escaped = byte == b'\\' && at + 1 < json.len();
            let end = if escaped { at + 2 } else { at + 1 };
            out.extend_from_slice(&json[at..end]);
            in_string = byte != b'"' || escaped;
            at = end;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let start = at;
            while at < json.len()
                && matches!(json[at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                at += 1;
            }
            let token = &json[start..at];
            let whole = std::str::from_utf8(token)
                .ok()
                .filter(|text| text.contains(['.', 'e', 'E']))
                .and_then(|text| text.parse::<f64>().ok())
                .filter(|number| number.fract() == 0.0 && number.abs() < EXACT);
            match whole {
                Some(number) => out.extend_from_slice((number as i64).to_string().as_bytes()),
                None => out.extend_from_slice(token),
            }
            continue;
        }
        in_string = byte == b'"';
        out.push(byte);
        at += 1;
    }
    out
}

/// serde_json appends " at line L column C"; the field path says more.
fn strip_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_string(),
        None => message,
    }
}

/// The query string as name/value pairs, checked against the parameters a route knows.
pub struct QueryParams {
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        Ok(QueryParams { pairs })
    }
}

impl QueryParams {
    /// Refuses parameters the route does not know, so a typo is never silently ignored.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), ApiError> {
        let unknown: Vec<FieldError> = self
            .pairs
            .iter()
            .filter(|(name, _)| !known.contains(&name.as_str()))
            .map(|(name, _)| {
                FieldError::new(
                    name,
                    format!("unknown query parameter; known: {}", known.join(", ")),
                )
            })
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let detail = format!(
            "unknown query parameter(s): {}",
            unknown.iter().map(|e| e.field.as_str()).collect::<Vec<_>>().join(", ")
        );
        Err(ApiError::BadRequest { detail, errors: unknown })
    }

    /// The single value of `name`, if given; repeating it is an error.
    pub fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(name);
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(value), None) => Ok(Some(value)),
            (Some(_), Some(_)) => Err(ApiError::bad_field(name, "given more than once")),
        }
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// An integer parameter within `min..=max`.
    pub fn int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(raw) = self.one(name)? else { return Ok(None) };
        match raw.parse::<i64>() {
            Ok(value) if (min..=max).contains(&value) => Ok(Some(value)),
            _ => Err(ApiError::bad_field(
                name,
                format!("must be an integer from {min} to {max}, got '{raw}'"),
            )),
        }
    }

    /// A boolean parameter: `true` or `false`.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.one(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(raw) => {
                Err(ApiError::bad_field(name, format!("must be true or false, got '{raw}'")))
            }
        }
    }

    /// A parameter parsed with `FromStr`, whose error message names the allowed values.
    pub fn parsed<T: std::str::FromStr<Err = String>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        self.one(name)?
            .map(|raw| raw.parse::<T>().map_err(|err| ApiError::bad_field(name, err)))
            .transpose()
    }
}

/// `?wait=SECONDS` for mutating routes: block until the job ends or the time is up.
pub fn wait_param(params: &QueryParams) -> Result<Option<std::time::Duration>, ApiError> {
    Ok(crate::api::admission::WaitParams::from_query(params)?.duration())
}

/// `?limit=&cursor=` of every list that pages by cursor (what `page_param` reads).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `limit` (1-100, default 50) and `cursor` (opaque, from a previous page's `next_cursor`).
pub fn page_param(params: &QueryParams) -> Result<crate::storage::PageRequest, ApiError> {
    use base64::Engine;
    let page = PageParams {
        limit: params.int("limit", 1, 100)?,
        cursor: params.one("cursor")?.map(str::to_string),
    };
    let limit = page.limit.unwrap_or(50);
    let after = match page.cursor.as_deref() {
        None => None,
        Some(raw) => {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|text| text.strip_prefix("after:").map(str::to_string));
            match decoded {
                Some(after) => Some(after),
                None => {
                    return Err(ApiError::bad_field(
                        "cursor",
                        "not a cursor returned by this API; use next_cursor from a previous page",
                    ));
                }
            }
        }
    };
    Ok(crate::storage::PageRequest { limit, after })
}

/// The opaque cursor for the page after the item `after`.
pub fn encode_cursor(after: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{after}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_without_a_fraction_is_an_integer_and_one_with_a_fraction_is_refused() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            count: i64,
            sizes: Vec<i64>,
        }
        let body: Body = parse_json(br#"{"count": 2.0, "sizes": [1e2, -3.0, 4]}"#).unwrap();
        assert_eq!((body.count, body.sizes), (2, vec![100, -3, 4]));
        // Strings are data: a number inside one is not rewritten.
        #[derive(Debug, serde::Deserialize)]
        struct Named {
            count: i64,
            name: String,
        }
        let named: Named = parse_json(br#"{"name": "v\"2.0\" 3.0", "count": 3.0}"#).unwrap();
        assert_eq!((named.count, named.name.as_str()), (3, r#"v"2.0" 3.0"#));
        // Past 2^53 a float is no longer exact, so it is not taken for an integer.
        assert!(parse_json::<Body>(br#"{"count": 9007199254740993.0, "sizes": []}"#).is_err());
        // A field given twice is refused, as before.
        let Err(ApiError::Validation(twice)) =
            parse_json::<Body>(br#"{"count": 1, "count": 2.0, "sizes": []}"#)
        else {
            panic!("a duplicate field is refused");
        };
        assert!(twice[0].message.contains("duplicate field"), "{:?}", twice[0]);
        let Err(ApiError::Validation(errors)) =
            parse_json::<Body>(br#"{"count": 2.5, "sizes": []}"#)
        else {
            panic!("a fraction is not an integer");
        };
        assert_eq!(errors[0].field, "count");
        assert!(matches!(parse_json::<Body>(b"{"), Err(ApiError::BadRequest { .. })));
    }

    fn forwarded(values: &[&str]) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_first_hop_no_trusted_proxy_wrote() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        let client = |headers: &[&str], peer| client_address(peer, &forwarded(headers), &trusted);
        // Not from a proxy: the header is ignored.
        assert_eq!(client(&["198.51.100.1"], stranger), stranger);
        // From a proxy: the hop it saw, with or without a port, whatever the client wrote
        // before it, garbage included.
        assert_eq!(client(&["198.51.100.1, 203.0.113.9"], proxy), stranger);
        assert_eq!(client(&["garbage, 203.0.113.9:5678"], proxy), stranger);
        let mut spoiled = axum::http::HeaderMap::new();
        let value = axum::http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap();
        spoiled.insert("x-forwarded-for", value);
        assert_eq!(client_address(proxy, &spoiled, &trusted), stranger);
        assert_eq!(
            client(&["x", "[2001:db8::1]:443"], proxy),
            "2001:db8::1".parse::<std::net::IpAddr>().unwrap()
        );
        // Through two proxies.
        assert_eq!(client(&["203.0.113.9, 10.0.0.7"], proxy), stranger);
        // A proxy's own garbage: the proxy is the client.
        assert_eq!(client(&["nonsense"], proxy), proxy);
    }
}
