//! A small HTTP load generator for `scripts/bench`: GETs one URL from N keep-alive connections
//! for a fixed time and prints requests/s and latency percentiles.
//!
//! Usage: cargo run --release --example load -- URL CONNECTIONS SECONDS
//! With `CORRAL_API_KEY` set, every request carries it as `X-API-KEY`.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, connections, seconds] = args.as_slice() else {
        eprintln!("usage: load URL CONNECTIONS SECONDS");
        std::process::exit(2);
    };
    let connections: usize = connections.parse().expect("CONNECTIONS is a number");
    let duration = Duration::from_secs(seconds.parse().expect("SECONDS is a number"));
    let deadline = Instant::now() + duration;

    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("CORRAL_API_KEY") {
        headers.insert("x-api-key", key.parse().expect("CORRAL_API_KEY is a valid header value"));
    }
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url = url.clone();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(corral::tls_client_config().unwrap())
            .pool_max_idle_per_host(1)
            .default_headers(headers.clone())
            .build()
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                match client.get(&url).send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(started.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut task_latencies, task_errors) = task.await.unwrap();
        latencies.append(&mut task_latencies);
        errors += task_errors;
    }
    latencies.sort();
    let percentile = |p: f64| {
        let idx = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(idx).copied().unwrap_or_default().as_secs_f64() * 1000.0
    };
    println!(
        "connections={connections} requests={} errors={errors} req/s={:.0} p50={:.2}ms p99={:.2}ms",
        latencies.len(),
        latencies.len() as f64 / duration.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
    );
}
