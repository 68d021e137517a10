//! A fault-injecting HTTP proxy between corral and moto: it counts EC2 calls per action and, on
//! a chosen share of calls, answers 500 or `RequestLimitExceeded`, drops the connection, loses
//! the answer of a call that did reach moto, or delays it past corral's call timeout. Its
//! `Mode`s make one fault happen for certain instead of by chance: the cloud down, the first
//! launch's answer lost or the first launch refused, every call failing after a launch, instances
//! pending forever. It keeps the ClientToken of every RunInstances it receives.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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
    mode: Mutex<Mode>,
    /// The ClientToken of every RunInstances received, in order.
    client_tokens: Mutex<Vec<String>>,
    /// Whether a RunInstances has been received (the `…First…` modes act on the first only).
    launch_seen: AtomicBool,
    /// Whether moto's answer to a RunInstances has been passed on.
    launch_answered: AtomicBool,
    /// Answers lost after the call reached moto, per EC2 action.
    lost: Mutex<BTreeMap<String, u64>>,
}

/// What the proxy does besides the random faults of its fault rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Random faults only.
    Random,
    /// The cloud cannot be reached: every call is answered 500 `InternalError`,
    /// `RequestLimitExceeded` or a dropped connection, at random, and none reaches moto.
    Down,
    /// The first RunInstances reaches moto and launches, and its answer is lost: the connection
    /// is dropped before any answer. Every other call passes.
    LoseFirstLaunchAnswer,
    /// The first RunInstances is answered 500 `InternalError` without reaching moto. Every other
    /// call passes.
    FailFirstLaunch,
    /// Calls pass until moto's answer to a RunInstances has been passed on; every call after it
    /// is answered 500 `InternalError` without reaching moto.
    FailAfterLaunch,
    /// Every DescribeInstances answer shows its instances `pending`, however long they have run.
    PendingForever,
    /// As `LoseFirstLaunchAnswer`, and from then on the cloud is down as in `Down`: the launch
    /// took effect, and corral cannot learn it.
    DownAfterLostLaunch,
    /// Every CreateTags is refused, 403 `UnauthorizedOperation`, without reaching moto, as a
    /// policy without `ec2:CreateTags` would. Every other call passes.
    RefuseTagging,
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
            mode: Mutex::new(Mode::Random),
            client_tokens: Mutex::default(),
            launch_seen: AtomicBool::new(false),
            launch_answered: AtomicBool::new(false),
            lost: Mutex::default(),
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

    /// Switches to `mode` from the next call on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// The ClientToken of every RunInstances received so far, in order (empty for a call that
    /// had none), whatever happened to the call.
    pub fn client_tokens(&self) -> Vec<String> {
        self.state.client_tokens.lock().unwrap().clone()
    }

    /// Calls of `action` that reached moto and whose answer was lost.
    pub fn answers_lost(&self, action: &str) -> u64 {
        self.state.lost.lock().unwrap().get(action).copied().unwrap_or_default()
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

/// The error that makes hyper close the connection without any answer.
fn dropped_connection(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionReset, why.to_string())
}

async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let param =
        |name: &str| params.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    let action = param("Action").unwrap_or_else(|| "unknown".to_string());
    let is_launch = action == "RunInstances";
    *state.calls.lock().unwrap().entry(action.clone()).or_default() += 1;
    if is_launch {
        state.client_tokens.lock().unwrap().push(param("ClientToken").unwrap_or_default());
    }
    let first_launch = is_launch && !state.launch_seen.swap(true, Ordering::SeqCst);
    let mode = *state.mode.lock().unwrap();
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.into())).await;
    }
    let record = |kind: &'static str| *state.faults.lock().unwrap().entry(kind).or_default() += 1;
    let lose =
        |action: &str| *state.lost.lock().unwrap().entry(action.to_string()).or_default() += 1;

    let down = mode == Mode::Down
        || (mode == Mode::DownAfterLostLaunch
            && !first_launch
            && state.launch_seen.load(Ordering::SeqCst));
    match mode {
        _ if down => match random_below(3) {
            0 => {
                record("internal_error");
                return Ok(ec2_error(500, "InternalError"));
            }
            1 => {
                record("throttled");
                return Ok(ec2_error(503, "RequestLimitExceeded"));
            }
            _ => {
                record("connection_reset");
                return Err(dropped_connection("injected reset"));
            }
        },
        Mode::FailFirstLaunch if first_launch => {
            record("internal_error");
            return Ok(ec2_error(500, "InternalError"));
        }
        Mode::FailAfterLaunch if state.launch_answered.load(Ordering::SeqCst) => {
            record("internal_error");
            return Ok(ec2_error(500, "InternalError"));
        }
        Mode::RefuseTagging if action == "CreateTags" => {
            record("unauthorized");
            return Ok(ec2_error(403, "UnauthorizedOperation"));
        }
        _ => {}
    }

    let fault =
        (random_below(1000) < state.fault_permille.load(Ordering::SeqCst)).then(|| random_below(5));
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
            return Err(dropped_connection("injected reset"));
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
    let mut bytes = upstream.bytes().await.map_err(std::io::Error::other)?;
    if fault == Some(3) {
        // The call took effect, but its answer is lost.
        record("answer_lost");
        lose(action.as_str());
        return Ok(ec2_error(500, "InternalError"));
    }
    if matches!(mode, Mode::LoseFirstLaunchAnswer | Mode::DownAfterLostLaunch) && first_launch {
        // The launch took effect; the connection drops before its answer.
        record("answer_lost");
        lose(action.as_str());
        return Err(dropped_connection("answer lost"));
    }
    if mode == Mode::PendingForever && action == "DescribeInstances" {
        let text = String::from_utf8_lossy(&bytes)
            .replace("<code>16</code><name>running</name>", "<code>0</code><name>pending</name>");
        bytes = Bytes::from(text);
    }
    if is_launch && status.is_success() {
        state.launch_answered.store(true, Ordering::SeqCst);
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    Ok(response.body(Full::new(bytes)).unwrap())
}
