//! `corral policy`: the guardrails in force.

use serde_json::Value;

use crate::cli::client::{Client, Outcome};
use crate::cli::output::{Format, Out, detail, scalar, yaml};

pub async fn policy(client: &Client, out: &Out) -> Outcome<()> {
    let policy: Value = client.get("/v1/policy").await?;
    match out.format {
        Format::Table | Format::Wide => out.line(detail(&rows(&policy)).trim_end())?,
        Format::Yaml | Format::Csv => out.line(yaml(&policy).trim_end())?,
        Format::Json => out.item(&policy, &[])?,
    }
    Ok(())
}

/// The policy as a line per setting (`MAX COUNT: 5`), a table of them (`AMIS`, one per
/// region) a line per entry (`AMIS *: owners=amazon,…`).
fn rows(policy: &Value) -> Vec<(String, String)> {
    let title = |key: &str| key.replace('_', " ").to_ascii_uppercase();
    let mut rows = Vec::new();
    for (key, value) in policy.as_object().into_iter().flatten() {
        match value {
            Value::Object(entries) if entries.values().all(Value::is_object) => {
                for (entry, value) in entries {
                    rows.push((format!("{} {entry}", title(key)), scalar(value)));
                }
            }
            value => rows.push((title(key), scalar(value))),
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_policy_reads_as_a_line_per_setting() {
        let policy = json!({
            "profile": "custom",
            "regions": ["us-east-1", "eu-west-1"],
            "amis": { "*": { "owners": ["amazon"], "ids": [] } },
            "storage_gb": { "min": 8, "max": 30, "default": 8 },
            "max_count": 5,
        });
        let text = super::detail(&super::rows(&policy));
        assert_eq!(
            text,
            "AMIS *:      ids=,owners=amazon\nMAX COUNT:   5\nPROFILE:     custom\n\
             REGIONS:     us-east-1,eu-west-1\nSTORAGE GB:  default=8,max=30,min=8\n"
        );
    }
}
