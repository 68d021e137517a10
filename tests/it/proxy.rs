//! A fault-injecting HTTP proxy between corral and moto: it counts EC2 calls per action and, on
//! a chosen share of calls, answers 500 or `RequestLimitExceeded`, drops the connection, loses
//! the answer of a call that did reach moto, or delays it past corral's call timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct State {
    upstream: String,
    client: reqwest::Client,
    /// Share of calls that fail, in thousandths.
    fault_permille: AtomicU32,
    /// Added to every call, in milliseconds.
    delay_ms: AtomicU32,
    /// How long a delayed call is held before it is forwarded, in milliseconds.
    fault_delay_ms: AtomicU32,
    calls: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

pub struct FaultProxy {
    pub url: String,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultProxy {
    pub async fn start(upstream: String, fault_rate: f64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream,
            client: crate::helpers::http(),
            fault_permille: AtomicU32::new((fault_rate * 1000.0) as u32),
            delay_ms: AtomicU32::new(0),
            fault_delay_ms: AtomicU32::new(1500),
            calls: Mutex::default(),
            faults: Mutex::default(),
        });
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(state.clone(), request));
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        FaultProxy { url, state, server }
    }

    /// Calls received so far, per EC2 action.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn calls_of(&self, action: &str) -> u64 {
        self.calls().get(action).copied().unwrap_or_default()
    }

    pub fn reset_calls(&self) {
        self.state.calls.lock().unwrap().clear();
    }

    /// Slows every call down by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.delay_ms.store(delay.as_millis() as u32, Ordering::SeqCst);
    }

    /// Holds a delayed call for `delay` (1.5 s unless set) before forwarding it: set it past
    /// corral's call timeout.
    pub fn set_fault_delay(&self, delay: Duration) {
        self.state.fault_delay_ms.store(delay.as_millis() as u32, Ordering::SeqCst);
    }

    /// Faults injected so far, per kind.
    pub fn faults(&self) -> BTreeMap<&'static str, u64> {
        self.state.faults.lock().unwrap().clone()
    }
}

fn random_below(n: u32) -> u32 {
    (uuid::Uuid::new_v4().as_u128() % n as u128) as u32
}

fn ec2_error(status: u16, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error></Errors><RequestID>proxy</RequestID></Response>"
    );
    Response::builder().status(status).body(Full::new(Bytes::from(body))).unwrap()
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let action = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "Action")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_else(|| "unknown".to_string());
    *state.calls.lock().unwrap().entry(action).or_default() += 1;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.into())).await;
    }

    let fault =
        (random_below(1000) < state.fault_permille.load(Ordering::SeqCst)).then(|| random_below(5));
    let record = |kind: &'static str| *state.faults.lock().unwrap().entry(kind).or_default() += 1;
    match fault {
        Some(0) => {
            record("internal_error");
            return Ok(ec2_error(500, "InternalError"));
        }
        Some(1) => {
            record("throttled");
            return Ok(ec2_error(503, "RequestLimitExceeded"));
        }
        Some(2) => {
            record("connection_reset");
            return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected reset"));
        }
        Some(4) => {
            record("delay");
            let delay = state.fault_delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay.into())).await;
        }
        _ => {}
    }

    let mut forward = state.client.post(format!("{}{}", state.upstream, parts.uri));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            forward = forward.header(name, value);
        }
    }
    let upstream = forward.body(body).send().await.map_err(std::io::Error::other)?;
    let status = upstream.status();
    let headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.map_err(std::io::Error::other)?;
    if fault == Some(3) {
        // The call took effect, but its answer is lost.
        record("answer_lost");
        return Ok(ec2_error(500, "InternalError"));
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    Ok(response.body(Full::new(bytes)).unwrap())
}
