//! Limits on what one request may take: how long an ordinary request may run, and how many
//! event streams are open at once, in all and per caller. (Connections and header timeouts are
//! the listener's: `server`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// The longest `?wait=` a request may ask for, which its timeout adds to the ordinary one.
pub const MAX_WAIT_SECS: u64 = 60;

/// What the API holds back, shared by every handler.
pub struct Limits {
    pub request_timeout: Duration,
    pub streams: StreamSlots,
}

/// Middleware: an ordinary request that runs past `request_timeout`, reading its body
/// included, is stopped and answered `503`; a request with `?wait=` gets the longest wait on
/// top. Only the time until the answer starts counts, so a job's event stream
/// (`/v1/jobs/{id}/events`) goes on as long as its job once its first byte is sent.
pub async fn request_timeout(
    State(limits): State<Arc<Limits>>,
    request: Request,
    next: Next,
) -> Response {
    let waits = request
        .uri()
        .query()
        .is_some_and(|query| form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "wait"));
    let limit = limits.request_timeout
        + if waits { Duration::from_secs(MAX_WAIT_SECS) } else { Duration::ZERO };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request took longer than {} s and was stopped (server.request_timeout_secs)",
            limit.as_secs()
        ))
        .into_response(),
    }
}

/// Counts open event streams, in all and per caller.
pub struct StreamSlots {
    total: usize,
    per_caller: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// An open stream's place; given back when dropped.
pub struct StreamSlot {
    caller: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl StreamSlots {
    pub fn new(total: usize, per_caller: usize) -> StreamSlots {
        StreamSlots { total, per_caller, open: Arc::default() }
    }

    /// A place for one more stream of `caller`, or the `429` that says which limit is reached.
    pub fn take(&self, caller: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap();
        let limit = if open.values().sum::<usize>() >= self.total {
            Some(format!("{} event streams are open on this server", self.total))
        } else if open.get(caller).copied().unwrap_or(0) >= self.per_caller {
            Some(format!("you have {} event streams open", self.per_caller))
        } else {
            None
        };
        if let Some(limit) = limit {
            return Err(ApiError::TooManyRequests {
                detail: format!("{limit}, as many as allowed; close one, or poll the job instead"),
                retry_after_secs: 5,
            });
        }
        *open.entry(caller.to_string()).or_default() += 1;
        Ok(StreamSlot { caller: caller.to_string(), open: self.open.clone() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap();
        if let Some(count) = open.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_past_its_time_is_stopped_whatever_it_accepts_unless_it_waits() {
        let limits = Arc::new(Limits {
            request_timeout: Duration::from_millis(200),
            streams: StreamSlots::new(1, 1),
        });
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "done"
        };
        let app = axum::Router::new()
            .route("/slow", axum::routing::get(slow))
            .layer(axum::middleware::from_fn_with_state(limits, request_timeout));
        let call = |uri: &str, accept: &str| {
            let request = axum::http::Request::get(uri)
                .header("accept", accept)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(request)
        };
        for accept in ["*/*", "text/event-stream"] {
            let stopped = call("/slow", accept).await.unwrap();
            assert_eq!(stopped.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE, "{accept}");
            assert_eq!(stopped.headers()["retry-after"], "1");
        }
        let served = call("/slow?wait=5", "*/*").await.unwrap();
        assert_eq!(served.status(), axum::http::StatusCode::OK);
    }

    #[test]
    fn streams_are_capped_per_caller_and_in_all_and_given_back() {
        let slots = StreamSlots::new(3, 2);
        let a1 = slots.take("a").unwrap();
        let _a2 = slots.take("a").unwrap();
        let refused = slots.take("a").err().unwrap().to_string();
        assert!(refused.contains("you have 2 event streams open"), "{refused}");
        let _b1 = slots.take("b").unwrap();
        let refused = slots.take("c").err().unwrap().to_string();
        assert!(refused.contains("3 event streams are open"), "{refused}");
        drop(a1);
        assert!(slots.take("c").is_ok());
    }
}
