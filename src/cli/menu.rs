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

    /// An answer that `check` accepts: one it refuses is asked again, saying why, so that a
    /// mistake is mended where it was made. `None` at the end of input.
    async fn ask_valid(
        &mut self,
        question: &str,
        default: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Outcome<Option<String>> {
        loop {
            let Some(answer) = self.ask_or(question, default).await? else { return Ok(None) };
            match check(&answer) {
                Ok(()) => return Ok(Some(answer)),
                Err(why) => eprintln!("  {why}"),
            }
        }
    }
}

/// Refuses an answer not among `allowed`, naming them.
fn one_of(allowed: &[String]) -> impl Fn(&str) -> Result<(), String> + '_ {
    move |answer| {
        if allowed.iter().any(|a| a == answer) {
            Ok(())
        } else {
            Err(format!("'{answer}' is not one of: {}", allowed.join(", ")))
        }
    }
}

/// Refuses an answer that is not a whole number from `min` to `max`.
fn number_in(min: i64, max: i64) -> impl Fn(&str) -> Result<(), String> {
    move |answer| match answer.parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(()),
        _ => Err(format!("give a whole number from {min} to {max}")),
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
                    prompt.ask_or("instance ids or names (space- or comma-separated)", "").await?
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
                        // What will go, before the question: a typo here destroys the wrong
                        // machine.
                        let mut action_args = action_args;
                        match doomed(client, &action_args.ids).await {
                            Ok(found) => {
                                eprintln!("this destroys, with their disks:");
                                for (_, line) in &found {
                                    eprintln!("  {line}");
                                }
                                // By id: what was shown is what goes.
                                action_args.ids = found.into_iter().map(|(id, _)| id).collect();
                            }
                            Err(failure) => {
                                eprintln!("error: {}", failure.message);
                                continue;
                            }
                        }
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

/// The id and `name  cloud-id  state  namespace` of each instance `ids` names, or why one
/// cannot be found.
async fn doomed(client: &Client, ids: &[String]) -> Outcome<Vec<(String, String)>> {
    let mut lines = Vec::new();
    for id in ids {
        let path = format!("/v1/instances/{}", crate::cli::commands::encode(id));
        let instance: crate::wire::InstanceBody = client.get(&path).await?;
        let cloud_id = instance.cloud_id.as_deref().unwrap_or("not launched");
        let line = format!(
            "{}  {cloud_id}  {}  namespace {}",
            instance.name, instance.state, instance.namespace
        );
        lines.push((instance.id, crate::cli::output::printable(&line)));
    }
    Ok(lines)
}

/// Asks for what a create needs, with the policy's defaults, each answer checked as it is
/// given against the policy.
async fn create(client: &Client, out: &Out, prompt: &mut Prompt) -> Outcome<()> {
    let policy: Value = client.get("/v1/policy").await?;
    let strings = |field: &str| -> Vec<String> {
        let values = policy[field].as_array().into_iter().flatten();
        values.filter_map(|v| v.as_str().map(str::to_string)).collect()
    };
    let (types, regions) = (strings("instance_types"), strings("regions"));
    let storage = &policy["storage_gb"];
    let (min_gb, max_gb) =
        (storage["min"].as_i64().unwrap_or(1), storage["max"].as_i64().unwrap_or(16384));
    let default_storage = storage["default"].as_i64().unwrap_or(min_gb).to_string();
    let max_count = policy["max_count"].as_i64().unwrap_or(1);
    let key_pairs: Value = client.get("/v1/keypairs").await.unwrap_or(Value::Null);
    let mut keys: Vec<String> = key_pairs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| pair["name"].as_str().map(str::to_string))
        .collect();
    keys.insert(0, "none".to_string());
    let ended = || Failure::usage("input ended before the create was complete");

    let name_rule = |answer: &str| {
        if crate::domain::is_valid_instance_name(answer) {
            Ok(())
        } else {
            Err("a name is 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
                .to_string())
        }
    };
    let ami_rule = |answer: &str| {
        let hex = answer.strip_prefix("ami-").unwrap_or_default();
        if (8..=17).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("an AMI id looks like ami-0123456789abcdef0".to_string())
        }
    };
    let port_rule = |answer: &str| match answer {
        "" | "none" => Ok(()),
        port => number_in(1, 65535)(port),
    };
    let name = prompt.ask_valid("name", "", name_rule).await?.ok_or_else(ended)?;
    let ami = prompt.ask_valid("AMI", "", ami_rule).await?.ok_or_else(ended)?;
    let default_type = types.first().cloned().unwrap_or_default();
    let instance_type = prompt
        .ask_valid("instance type", &default_type, one_of(&types))
        .await?
        .ok_or_else(ended)?;
    let storage_gb = prompt
        .ask_valid("storage GB", &default_storage, number_in(min_gb, max_gb))
        .await?
        .ok_or_else(ended)?;
    let default_region = policy["default_region"].as_str().unwrap_or_default();
    let region =
        prompt.ask_valid("region", default_region, one_of(&regions)).await?.ok_or_else(ended)?;
    let namespace = prompt
        .ask_valid("namespace", "default", |answer| {
            if crate::domain::is_valid_namespace(answer) {
                Ok(())
            } else {
                Err(format!("'{answer}' is not a namespace name"))
            }
        })
        .await?
        .ok_or_else(ended)?;
    let key = prompt.ask_valid("key pair", "none", one_of(&keys)).await?.ok_or_else(ended)?;
    let port = prompt
        .ask_valid("open a port to your address (e.g. 22, or none)", "none", port_rule)
        .await?
        .ok_or_else(ended)?;
    let count = prompt.ask_valid("count", "1", number_in(1, max_count)).await?.ok_or_else(ended)?;

    let count: i64 = count.parse().expect("checked");
    let name_field = if count > 1 { "name_prefix" } else { "name" };
    let mut body = json!({
        "ami": ami, "instance_type": instance_type,
        "storage_gb": storage_gb.parse::<i64>().expect("checked"),
        "region": region, "namespace": namespace, "count": count,
    });
    body[name_field] = Value::String(name);
    if key != "none" {
        body["key_name"] = Value::String(key);
    }
    if let Ok(port) = port.parse::<u16>() {
        body["ingress"] = json!([{ "port": port, "cidr": "caller" }]);
    }
    let job = client.post("/v1/instances", &body).await?;
    job_result(client, out, job, true).await
}
