//! Slows down password guessing: failed logins are counted per username and per client
//! address over a sliding window; past the limit, attempts are refused until the oldest
//! failure leaves the window. Counts live in this process (each replica counts its own).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most; beyond this, keys whose failures have all expired are dropped.
const MAX_KEYS: usize = 10_000;

pub struct LoginThrottle {
    per_user: usize,
    per_address: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(per_user: u32, per_address: u32, window: Duration) -> LoginThrottle {
        LoginThrottle {
            per_user: per_user as usize,
            per_address: per_address as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` when `username` or `address` has failed too often lately.
    pub fn check(&self, username: &str, address: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap();
        let mut wait = Duration::ZERO;
        for (key, limit) in
            [(user_key(username), self.per_user), (address_key(address), self.per_address)]
        {
            if let Some(times) = failures.get_mut(&key) {
                expire(times, now, self.window);
                if times.len() >= limit
                    && let Some(oldest) = times.front()
                {
                    wait = wait.max(self.window.saturating_sub(now - *oldest));
                }
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait.max(Duration::from_secs(1))) }
    }

    pub fn record_failure(&self, username: &str, address: &str) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap();
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, times| {
                expire(times, now, self.window);
                !times.is_empty()
            });
        }
        for key in [user_key(username), address_key(address)] {
            failures.entry(key).or_default().push_back(now);
        }
    }

    /// A successful login clears the user's failures (not the address's).
    pub fn record_success(&self, username: &str) {
        self.failures.lock().unwrap().remove(&user_key(username));
    }
}

fn user_key(username: &str) -> String {
    format!("user:{username}")
}

fn address_key(address: &str) -> String {
    format!("addr:{address}")
}

fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times.front().is_some_and(|at| now.duration_since(*at) >= window) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_limit_are_refused_per_user_and_per_address() {
        let throttle = LoginThrottle::new(3, 5, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(throttle.check("alice", "10.0.0.1").is_ok());
            throttle.record_failure("alice", "10.0.0.1");
        }
        let wait = throttle.check("alice", "10.0.0.2").unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        // Another user from the same address is fine until the address's own limit.
        assert!(throttle.check("bob", "10.0.0.1").is_ok());
        throttle.record_failure("bob", "10.0.0.1");
        throttle.record_failure("bob", "10.0.0.1");
        assert!(throttle.check("carol", "10.0.0.1").is_err());
        assert!(throttle.check("carol", "10.0.0.9").is_ok());

        throttle.record_success("alice");
        assert!(throttle.check("alice", "10.0.0.2").is_ok());
    }

    #[test]
    fn failures_leave_the_window() {
        let throttle = LoginThrottle::new(1, 10, Duration::from_millis(30));
        throttle.record_failure("alice", "a");
        assert!(throttle.check("alice", "a").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(throttle.check("alice", "a").is_ok());
    }
}
