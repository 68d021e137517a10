//! Slows down password guessing without letting strangers lock anyone out.
//!
//! Failed logins are counted per (username, client) and per client over a sliding window,
//! where a client is an IPv4 address or an IPv6 /64 (one host's usual allocation). Past a
//! key's limit, each further attempt must wait twice as long after the previous failure as the
//! one before (1 s, 2 s, 4 s, … up to the window), so guessing slows to a crawl, while the same
//! user logging in from another client is not held back at all.
//!
//! An attempt is counted when it begins, before its password is hashed (`begin`), and forgiven
//! only when it succeeds: many attempts sent at once cannot all pass the check before the
//! first of them is counted. A failure's time is when it ended, so that the delay is measured
//! from the answer the client saw, however long the hash took. Counts live in this process (each replica counts its own).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at most. Beyond this, keys whose failures have all expired are dropped, and if
/// that is not enough (many clients failing at once), the half least recently failed: memory
/// stays bounded, at the price of forgetting the quietest guessers first.
const MAX_KEYS: usize = 10_000;

pub struct LoginThrottle {
    per_user: usize,
    per_address: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// A login attempt, counted as a failure unless it `succeeded`.
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    keys: [String; 2],
    at: Instant,
    succeeded: bool,
}

impl LoginThrottle {
    pub fn new(per_user: u32, per_address: u32, window: Duration) -> LoginThrottle {
        LoginThrottle {
            per_user: per_user.max(1) as usize,
            per_address: per_address.max(1) as usize,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt to log in as `username` from `client`, or answers `Err(wait)` when
    /// that user from that client, or that client, must wait before trying again.
    pub fn begin(&self, username: &str, client: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let client = client_key(client);
        let keys = [format!("user:{username}@{client}"), format!("client:{client}")];
        let mut failures = self.failures.lock().unwrap();
        let mut wait = Duration::ZERO;
        for (key, limit) in keys.iter().zip([self.per_user, self.per_address]) {
            if let Some(times) = failures.get_mut(key) {
                expire(times, now, self.window);
                wait = wait.max(self.wait(times, limit, now));
            }
        }
        if !wait.is_zero() {
            return Err(wait.max(Duration::from_secs(1)));
        }
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, times| {
                expire(times, now, self.window);
                !times.is_empty()
            });
        }
        if failures.len() >= MAX_KEYS {
            let mut latest: Vec<Instant> =
                failures.values().filter_map(|times| times.iter().max().copied()).collect();
            latest.sort_unstable();
            let cutoff = latest[latest.len() / 2];
            failures.retain(|_, times| times.iter().max().is_some_and(|at| *at > cutoff));
        }
        for key in &keys {
            failures.entry(key.clone()).or_default().push_back(now);
        }
        Ok(Attempt { throttle: self, keys, at: now, succeeded: false })
    }

    /// How long a key with `times` failures must still wait: nothing below `limit`, then
    /// 2^(failures - limit) seconds after the last failure, at most the window.
    fn wait(&self, times: &VecDeque<Instant>, limit: usize, now: Instant) -> Duration {
        let Some(last) = times.iter().max().filter(|_| times.len() >= limit) else {
            return Duration::ZERO;
        };
        let doublings = (times.len() - limit).min(20) as u32;
        let delay = Duration::from_secs(1u64 << doublings).min(self.window);
        delay.saturating_sub(now.saturating_duration_since(*last))
    }
}

impl Attempt<'_> {
    /// The password was right: this user's failures from this client are forgiven, and this
    /// attempt no longer counts against the client.
    pub fn succeeded(mut self) {
        self.succeeded = true;
        let mut failures = self.throttle.failures.lock().unwrap();
        failures.remove(&self.keys[0]);
        if let Some(times) = failures.get_mut(&self.keys[1])
            && let Some(at) = times.iter().rposition(|at| *at == self.at)
        {
            times.remove(at);
        }
    }
}

impl Drop for Attempt<'_> {
    /// A failed attempt counts from when it ended.
    fn drop(&mut self) {
        if self.succeeded {
            return;
        }
        let now = Instant::now();
        let mut failures = self.throttle.failures.lock().unwrap();
        for key in &self.keys {
            if let Some(times) = failures.get_mut(key)
                && let Some(at) = times.iter_mut().rev().find(|at| **at == self.at)
            {
                *at = now;
            }
        }
    }
}

/// The part of an address that identifies one client: an IPv4 address, or the /64 of an IPv6
/// one (an IPv4-mapped address counts as its IPv4).
pub fn client_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

fn expire(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times.front().is_some_and(|at| now.duration_since(*at) >= window) {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn failures_past_the_limit_wait_longer_each_time_per_user_and_client() {
        let throttle = LoginThrottle::new(3, 5, Duration::from_secs(60));
        for _ in 0..3 {
            drop(throttle.begin("alice", ip("10.0.0.1")).unwrap());
        }
        let wait = throttle.begin("alice", ip("10.0.0.1")).err().unwrap();
        assert_eq!(wait, Duration::from_secs(1));
        // The same user from elsewhere is not held back; another user from the same client
        // is, once the client's own limit is reached.
        throttle.begin("alice", ip("10.0.0.2")).unwrap().succeeded();
        drop(throttle.begin("bob", ip("10.0.0.1")).unwrap());
        drop(throttle.begin("bob", ip("10.0.0.1")).unwrap());
        assert!(throttle.begin("carol", ip("10.0.0.1")).is_err());
        assert!(throttle.begin("carol", ip("10.0.0.9")).is_ok());
    }

    #[test]
    fn the_delay_doubles_after_each_failure_past_the_limit() {
        let throttle = LoginThrottle::new(1, 100, Duration::from_secs(60));
        let mut failures = throttle.failures.lock().unwrap();
        let past = Instant::now() - Duration::from_secs(30);
        failures.insert("user:alice@a".into(), VecDeque::from(vec![past; 4]));
        let times = &failures["user:alice@a"];
        // 4 failures, limit 1: 2^3 = 8 s after the last, which was 30 s ago.
        assert_eq!(throttle.wait(times, 1, Instant::now()), Duration::ZERO);
        assert_eq!(throttle.wait(times, 1, past), Duration::from_secs(8));
        let many = VecDeque::from(vec![past; 40]);
        assert_eq!(throttle.wait(&many, 1, past), Duration::from_secs(60), "capped");
    }

    #[test]
    fn attempts_count_before_they_are_checked_and_a_success_forgives_them() {
        let throttle = LoginThrottle::new(2, 10, Duration::from_secs(60));
        // Two attempts under way at once: a third is refused before either has finished.
        let first = throttle.begin("alice", ip("10.0.0.1")).unwrap();
        let second = throttle.begin("alice", ip("10.0.0.1")).unwrap();
        assert!(throttle.begin("alice", ip("10.0.0.1")).is_err());
        first.succeeded();
        second.succeeded();
        assert!(throttle.begin("alice", ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn ipv6_clients_are_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("2001:db8:1:2:bbbb::9")), "2001:db8:1:2::/64");
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), "192.0.2.7");
        let throttle = LoginThrottle::new(1, 10, Duration::from_secs(60));
        drop(throttle.begin("alice", ip("2001:db8:1:2::1")).unwrap());
        assert!(throttle.begin("alice", ip("2001:db8:1:2:ffff::2")).is_err());
        assert!(throttle.begin("alice", ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn the_keys_kept_stay_bounded_however_many_clients_fail() {
        let throttle = LoginThrottle::new(5, 20, Duration::from_secs(60));
        for n in 0..(MAX_KEYS as u32 * 2) {
            let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            drop(throttle.begin("admin", client).unwrap());
        }
        assert!(throttle.failures.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn failures_leave_the_window() {
        let throttle = LoginThrottle::new(1, 10, Duration::from_millis(30));
        drop(throttle.begin("alice", ip("10.0.0.1")).unwrap());
        assert!(throttle.begin("alice", ip("10.0.0.1")).is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(throttle.begin("alice", ip("10.0.0.1")).is_ok());
    }
}
