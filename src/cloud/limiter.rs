//! Client-side token buckets per region and API class, sized like EC2's own request buckets, so
//! that all the workers of a process together stay inside the account's budget instead of
//! finding its edge through `RequestLimitExceeded`.
//!
//! When the cloud throttles anyway (another tool shares the account), `slow_down` empties the
//! bucket and halves its refill rate for a while; the rate recovers afterwards.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Bucket, RateLimits};

/// How long a throttled bucket stays slowed down.
const SLOW_DOWN_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiClass {
    /// RunInstances, StartInstances.
    Launch,
    /// Other mutating calls.
    Mutate,
    /// Describe calls.
    Describe,
}

struct State {
    tokens: f64,
    rate: f64,
    refilled_at: Instant,
    slowed_until: Option<Instant>,
}

pub struct RateLimiter {
    limits: RateLimits,
    buckets: Mutex<HashMap<(String, ApiClass), State>>,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> RateLimiter {
        RateLimiter { limits, buckets: Mutex::new(HashMap::new()) }
    }

    fn limit(&self, class: ApiClass) -> Bucket {
        match class {
            ApiClass::Launch => self.limits.launch,
            ApiClass::Mutate => self.limits.mutate,
            ApiClass::Describe => self.limits.describe,
        }
    }

    /// Waits until a call of `class` in `region` may be made, and takes its token.
    pub async fn acquire(&self, region: &str, class: ApiClass) {
        loop {
            let wait = {
                let mut buckets = self.buckets.lock().unwrap();
                let limit = self.limit(class);
                let state = buckets.entry((region.to_string(), class)).or_insert_with(|| State {
                    tokens: limit.burst,
                    rate: limit.per_second,
                    refilled_at: Instant::now(),
                    slowed_until: None,
                });
                let now = Instant::now();
                if state.slowed_until.is_some_and(|until| now >= until) {
                    state.slowed_until = None;
                    state.rate = limit.per_second;
                }
                let elapsed = now.duration_since(state.refilled_at).as_secs_f64();
                state.tokens = (state.tokens + elapsed * state.rate).min(limit.burst);
                state.refilled_at = now;
                if state.tokens >= 1.0 {
                    state.tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.tokens) / state.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The cloud throttled a call of `class` in `region`: back off harder for a while.
    pub fn slow_down(&self, region: &str, class: ApiClass) {
        let mut buckets = self.buckets.lock().unwrap();
        let limit = self.limit(class);
        if let Some(state) = buckets.get_mut(&(region.to_string(), class)) {
            state.tokens = 0.0;
            state.rate = (state.rate / 2.0).max(limit.per_second / 16.0);
            state.slowed_until = Some(Instant::now() + SLOW_DOWN_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> RateLimiter {
        RateLimiter::new(RateLimits {
            launch: Bucket { burst: 5.0, per_second: 2.0 },
            ..RateLimits::default()
        })
    }

    async fn time_for(limiter: &RateLimiter, calls: usize, region: &str) -> f64 {
        let started = Instant::now();
        for _ in 0..calls {
            limiter.acquire(region, ApiClass::Launch).await;
        }
        started.elapsed().as_secs_f64()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_passes_at_once_then_calls_follow_the_refill_rate() {
        let limiter = limiter();
        assert!(time_for(&limiter, 5, "us-east-1").await < 0.01);
        let next_four = time_for(&limiter, 4, "us-east-1").await;
        assert!((1.99..2.1).contains(&next_four), "{next_four}");
        // Another region has its own bucket.
        assert!(time_for(&limiter, 5, "eu-west-1").await < 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_rate_until_it_recovers() {
        let limiter = limiter();
        time_for(&limiter, 5, "us-east-1").await;
        limiter.slow_down("us-east-1", ApiClass::Launch);
        let slowed = time_for(&limiter, 2, "us-east-1").await;
        assert!((1.99..2.1).contains(&slowed), "two calls at 1/s: {slowed}");
        tokio::time::sleep(SLOW_DOWN_FOR).await;
        time_for(&limiter, 5, "us-east-1").await;
        let recovered = time_for(&limiter, 2, "us-east-1").await;
        assert!((0.99..1.1).contains(&recovered), "two calls at 2/s: {recovered}");
    }
}
