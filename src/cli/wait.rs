//! Following a job until it ends: its server-sent events drive a live line per instance on a
//! terminal (indicatif), or plain lines on stderr when piped. Ctrl-C stops the watching, never
//! the job, and says how to resume.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;

use crate::cli::ExitCode;
use crate::cli::client::{Client, Failure, Outcome};
use crate::wire::{JobBody, JobEventBody};

/// Follows job `id` until it ends and returns it as the API does.
pub async fn follow(client: &Client, id: &str, live: bool) -> Outcome<JobBody> {
    let watch = watch(client, id, live);
    tokio::select! {
        job = watch => job,
        _ = tokio::signal::ctrl_c() => Err(Failure::new(
            ExitCode::Interrupted,
            format!("stopped waiting; job {id} goes on. Watch it again with: corral jobs wait {id}"),
        )),
    }
}

async fn watch(client: &Client, id: &str, live: bool) -> Outcome<JobBody> {
    let mut display = Display::new(live);
    let mut last_seq: Option<String> = None;
    let mut failures = 0;
    loop {
        let mut request = client
            .request(Method::GET, &format!("/v1/jobs/{id}/events"))
            .header("accept", "text/event-stream");
        if let Some(seq) = &last_seq {
            request = request.header("last-event-id", seq);
        }
        let streamed = match request.send().await {
            Ok(response) if response.status().is_success() => {
                read_events(client, id, response, &mut display, &mut last_seq).await
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                return Err(crate::cli::client::problem(status, &text));
            }
            Err(err) => Err(Failure::failed(err.to_string())),
        };
        match streamed {
            Ok(Some(job)) => {
                display.finish(&job);
                return Ok(job);
            }
            // The stream ended early (a restart, a proxy): pick it up where it stopped.
            Ok(None) | Err(_) if failures < 30 => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) => return Err(Failure::failed(format!("lost the event stream of job {id}"))),
            Err(failure) => return Err(failure),
        }
    }
}

/// Reads events until the `end` event, which carries the finished job.
async fn read_events(
    client: &Client,
    id: &str,
    mut response: reqwest::Response,
    display: &mut Display,
    last_seq: &mut Option<String>,
) -> Outcome<Option<JobBody>> {
    let mut buffer = String::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(None),
            Err(err) => return Err(Failure::failed(err.to_string())),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let event = parse_event(&block);
            if let Some(seq) = &event.id {
                *last_seq = Some(seq.clone());
            }
            match event.kind.as_str() {
                "end" => {
                    return serde_json::from_str(&event.data)
                        .map(Some)
                        .map_err(|err| Failure::failed(format!("unreadable job: {err}")));
                }
                "" => {}
                kind => {
                    let message = serde_json::from_str::<JobEventBody>(&event.data)
                        .map(|event| event.message)
                        .unwrap_or_default();
                    let job = client.get(&format!("/v1/jobs/{id}")).await.ok();
                    display.event(kind, &message, job.as_ref());
                }
            }
        }
    }
}

#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    kind: String,
    id: Option<String>,
    data: String,
}

/// One server-sent event block (`event:`, `id:`, `data:` lines; comments ignored).
fn parse_event(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.kind = value.to_string(),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    event.data = data.join("\n");
    event
}

/// A line per instance, live on a terminal; plain lines on stderr otherwise.
struct Display {
    live: Option<(MultiProgress, Vec<ProgressBar>)>,
    /// What plain mode printed last per instance, to print changes only.
    seen: Vec<String>,
}

impl Display {
    fn new(live: bool) -> Display {
        let live = live
            .then(|| (MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), Vec::new()));
        Display { live, seen: Vec::new() }
    }

    fn event(&mut self, kind: &str, message: &str, job: Option<&JobBody>) {
        let instances = job.map(instance_lines).unwrap_or_default();
        match &mut self.live {
            Some((multi, bars)) => {
                while bars.len() < instances.len() {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg}").expect("template"),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bars.push(bar);
                }
                for (bar, line) in bars.iter().zip(&instances) {
                    bar.set_message(line.clone());
                }
                if kind == "error" {
                    let _ =
                        multi.println(format!("error: {}", crate::cli::output::printable(message)));
                }
            }
            None => {
                for line in summary(kind, message, job.map(|job| job.id.as_str())) {
                    eprintln!("{line}");
                }
                for line in instances {
                    if !self.seen.contains(&line) {
                        eprintln!("  {line}");
                        self.seen.push(line);
                    }
                }
            }
        }
    }

    fn finish(&mut self, job: &JobBody) {
        if let Some((_, bars)) = &self.live {
            for (bar, line) in bars.iter().zip(instance_lines(job)) {
                bar.finish_with_message(line);
            }
        }
    }
}

/// How an event is shown while a job is followed: a step's first line says what it did; the
/// rest (a Terraform command's whole output) is in the job's history, which the summary
/// names.
fn summary(kind: &str, message: &str, job_id: Option<&str>) -> Vec<String> {
    let mut lines = message.lines();
    let first = crate::cli::output::printable(lines.next().unwrap_or_default());
    let mut shown = vec![format!("{kind}: {first}")];
    let more = lines.count();
    if more > 0 {
        let history = job_id.map_or_else(String::new, |id| format!(": corral jobs events {id}"));
        shown.push(format!("  ({more} more lines{history})"));
    }
    shown
}

/// `name  cloud-id  state  public-ip` for each instance of a job.
pub fn instance_lines(job: &JobBody) -> Vec<String> {
    job.instances
        .iter()
        .map(|instance| {
            crate::cli::output::printable(&format!(
                "{}  {}  {}  {}",
                instance.name,
                instance.cloud_id.as_deref().unwrap_or("-"),
                instance.state,
                instance.public_ip.as_deref().unwrap_or("-")
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_step_is_one_line_and_where_the_rest_is() {
        let plan = "terraform plan: succeeded\nPlan: 1 to add\n\u{1b}[1mdone";
        assert_eq!(
            summary("step", plan, Some("j1")),
            ["step: terraform plan: succeeded", "  (2 more lines: corral jobs events j1)"]
        );
        assert_eq!(summary("step", "launched i-1", Some("j1")), ["step: launched i-1"]);
    }

    #[test]
    fn event_blocks_are_parsed_like_browsers_do() {
        let event = parse_event("id: 3\nevent: step\ndata: {\"message\":\"launching\"}\n\n");
        assert_eq!(
            event,
            SseEvent {
                kind: "step".into(),
                id: Some("3".into()),
                data: "{\"message\":\"launching\"}".into()
            }
        );
        assert_eq!(parse_event(": keep-alive\n\n"), SseEvent::default());
    }
}
