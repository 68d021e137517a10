//! Interactive mode: a numbered menu over the same client code as the commands, reading one
//! answer per line, so it works at a terminal and fed by a pipe alike, and ends cleanly at the
//! end of its input.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use crate::cli::client::{Client, Failure, Outcome};
use crate::cli::commands::{
    Action, InstancesCommand, ListInstances, Terminate, instances, job_result, split_ids,
};
use crate::cli::output::{Format, Out};

const MENU: &str = "\n  1) list instances\n  2) list instances in a state\n  3) create an instance\n  \
                    4) stop\n  5) start\n  6) reboot\n  7) terminate\n  0) exit";

struct Prompt {
    lines: Lines<BufReader<Stdin>>,
}

impl Prompt {
    /// The next answer, trimmed; `None` at the end of input.
    async fn ask(&mut self, question: &str) -> Outcome<Option<String>> {
        eprint!("{question}");
        Ok(self.lines.next_line().await?.map(|line| line.trim().to_string()))
    }

    /// An answer, or `default` when the answer is empty.
    async fn ask_or(&mut self, question: &str, default: &str) -> Outcome<Option<String>> {
        let shown = if default.is_empty() {
            format!("{question}: ")
        } else {
            format!("{question} [{default}]: ")
        };
        Ok(self
            .ask(&shown)
            .await?
            .map(|answer| if answer.is_empty() { default.to_string() } else { answer }))
    }
}

/// Runs the menu until `0`, `exit`, or the end of input.
pub async fn run(client: &Client) -> Outcome<()> {
    let out = Out::new(Format::Table, false);
    let mut prompt = Prompt { lines: BufReader::new(tokio::io::stdin()).lines() };
    eprintln!("corral at {} — pick a number", client.base());
    loop {
        eprintln!("{MENU}");
        let Some(choice) = prompt.ask("> ").await? else {
            eprintln!();
            return Ok(());
        };
        let result = match choice.as_str() {
            "1" => list(client, &out, None).await,
            "2" => match prompt.ask_or("state", "running").await? {
                Some(state) => list(client, &out, Some(state)).await,
                None => return Ok(()),
            },
            "3" => create(client, &out, &mut prompt).await,
            "4" | "5" | "6" | "7" => {
                let action = ["stop", "start", "reboot", "terminate"]
                    [choice.as_bytes()[0] as usize - b'4' as usize];
                let Some(ids) =
                    prompt.ask_or("instance ids (space- or comma-separated)", "").await?
                else {
                    return Ok(());
                };
                let ids = split_ids(&[ids]);
                if ids.is_empty() {
                    eprintln!("no instance ids given: nothing to {action}");
                    continue;
                }
                let action_args = Action { ids, wait: true };
                let command = match action {
                    "stop" => InstancesCommand::Stop(action_args),
                    "start" => InstancesCommand::Start(action_args),
                    "reboot" => InstancesCommand::Reboot(action_args),
                    _ => {
                        let Some(answer) = prompt.ask_or("terminate them? (yes/no)", "no").await?
                        else {
                            return Ok(());
                        };
                        let yes =
                            answer.eq_ignore_ascii_case("yes") || answer.eq_ignore_ascii_case("y");
                        if !yes {
                            eprintln!("nothing was terminated");
                            continue;
                        }
                        InstancesCommand::Terminate(Terminate { action: action_args, yes: true })
                    }
                };
                instances(client, &out, command).await
            }
            "0" | "exit" | "quit" | "q" => return Ok(()),
            "" => continue,
            other => {
                eprintln!("'{other}' is not on the menu");
                continue;
            }
        };
        if let Err(failure) = result {
            eprintln!("error: {}", failure.message);
        }
    }
}

async fn list(client: &Client, out: &Out, state: Option<String>) -> Outcome<()> {
    let list = ListInstances {
        namespace: None,
        state,
        all: false,
        tags: Vec::new(),
        name: None,
        limit: None,
    };
    instances(client, out, InstancesCommand::List(list)).await
}

/// Asks for what a create needs, with the policy's defaults.
async fn create(client: &Client, out: &Out, prompt: &mut Prompt) -> Outcome<()> {
    let policy: Value = client.get("/v1/policy").await?;
    let first = |field: &str| policy[field][0].as_str().unwrap_or_default().to_string();
    let default_storage = policy["storage_gb"]["default"].as_i64().unwrap_or(8).to_string();
    let default_region = policy["default_region"].as_str().unwrap_or_default().to_string();
    let mut answers = Vec::new();
    for (question, default) in [
        ("name", String::new()),
        ("AMI", String::new()),
        ("instance type", first("instance_types")),
        ("storage GB", default_storage),
        ("region", default_region),
        ("namespace", "default".to_string()),
        ("count", "1".to_string()),
    ] {
        match prompt.ask_or(question, &default).await? {
            Some(answer) => answers.push(answer),
            None => return Err(Failure::usage("input ended before the create was complete")),
        }
    }
    let [name, ami, instance_type, storage, region, namespace, count] =
        <[String; 7]>::try_from(answers).expect("seven answers");
    let count: i64 =
        count.parse().map_err(|_| Failure::usage(format!("count '{count}' is not a number")))?;
    let storage: i64 = storage
        .parse()
        .map_err(|_| Failure::usage(format!("storage '{storage}' is not a number")))?;
    let name_field = if count > 1 { "name_prefix" } else { "name" };
    let mut body = json!({
        "ami": ami, "instance_type": instance_type, "storage_gb": storage,
        "region": region, "namespace": namespace, "count": count,
    });
    body[name_field] = Value::String(name);
    let job = client.post("/v1/instances", &body).await?;
    job_result(client, out, job, true).await
}
