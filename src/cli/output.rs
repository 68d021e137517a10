//! Printing what the API answered: a table for people (`table`, `wide`), or the API's own
//! field names for scripts (`json`, `yaml`, `csv`), or only ids (`--quiet`).
//!
//! Everything is written through `Out`, whose errors the caller sees, so that a closed pipe
//! (`corral … | head`) ends the command quietly instead of panicking.
//!
//! Values come from users (names, tags), so tables drop control characters (a tag cannot move
//! the cursor or recolor the terminal), and CSV defuses cells a spreadsheet would run as
//! formulas. JSON and YAML stay exact.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
    Csv,
}

/// A column of items of type `T`: its header in tables, its field name in CSV, and how to
/// read its cell from an item. Items of the API's wire types are read through their fields
/// (`Column::new`), so that the compiler checks every column; untyped JSON items by name
/// (`field_column!`).
pub struct Column<T> {
    pub header: &'static str,
    pub field: &'static str,
    pub wide_only: bool,
    read: fn(&T) -> String,
}

impl<T> Column<T> {
    pub const fn new(header: &'static str, field: &'static str, read: fn(&T) -> String) -> Self {
        Column { header, field, wide_only: false, read }
    }

    pub const fn wide(self) -> Self {
        Column { wide_only: true, ..self }
    }
}

/// A `Column<Value>` showing the JSON field of the name given, for answers read untyped.
macro_rules! field_column {
    ($header:expr, $field:literal) => {
        $crate::cli::output::Column::<serde_json::Value>::new($header, $field, |item| {
            $crate::cli::output::scalar(&item[$field])
        })
    };
}
pub(crate) use field_column;

/// A value as one cell, as its JSON form shows (`scalar`): what a table shows of a typed
/// field is what it showed of the same field in JSON.
pub fn cell(value: &impl Serialize) -> String {
    scalar(&serde_json::to_value(value).unwrap_or_default())
}

/// A value as one cell: strings bare, null empty, objects as `k=v` pairs.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Object(map) => map
            .iter()
            .map(|(key, value)| format!("{key}={}", scalar(value)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub struct Out {
    pub format: Format,
    pub quiet: bool,
    stdout: std::io::Stdout,
}

impl Out {
    pub fn new(format: Format, quiet: bool) -> Out {
        Out { format, quiet, stdout: std::io::stdout() }
    }

    pub fn line(&self, text: &str) -> std::io::Result<()> {
        let mut lock = self.stdout.lock();
        writeln!(lock, "{text}")?;
        lock.flush()
    }

    /// One object, as the API gave it (json, yaml), as a one-row CSV, or, in the table
    /// formats, a line per field, every column shown (`detail`).
    pub fn item<T: Serialize>(&self, item: &T, columns: &[Column<T>]) -> std::io::Result<()> {
        match self.format {
            // Through `Value`, as lists are: its keys are sorted, as they were when the answer
            // was read untyped.
            Format::Json => {
                self.line(&serde_json::to_string_pretty(&json(item)).expect("JSON prints"))
            }
            Format::Yaml => self.line(yaml(&json(item)).trim_end()),
            Format::Table | Format::Wide if !self.quiet => self.write(&detail(
                &columns.iter().map(|c| (c.header.to_string(), (c.read)(item))).collect::<Vec<_>>(),
            )),
            _ => self.items(std::slice::from_ref(item), columns),
        }
    }

    /// A list: an array (json, yaml), rows (table, wide, csv), or identifiers (quiet).
    pub fn items<T: Serialize>(&self, items: &[T], columns: &[Column<T>]) -> std::io::Result<()> {
        if self.quiet {
            // The first column is what identifies an item: an id, a username, a name.
            for item in items {
                self.line(&columns.first().map_or_else(String::new, |column| (column.read)(item)))?;
            }
            return Ok(());
        }
        let array = json(items);
        match self.format {
            Format::Json => self.line(&serde_json::to_string_pretty(&array).expect("JSON prints")),
            Format::Yaml => self.line(yaml(&array).trim_end()),
            Format::Csv => {
                let mut text = String::new();
                let headers: Vec<&str> = columns.iter().map(|column| column.field).collect();
                text.push_str(&csv_row(&headers));
                for item in items {
                    let row: Vec<String> =
                        columns.iter().map(|column| (column.read)(item)).collect();
                    text.push_str(&csv_row(&row));
                }
                self.write(&text)
            }
            Format::Table | Format::Wide => {
                let wide = self.format == Format::Wide;
                let shown: Vec<&Column<T>> =
                    columns.iter().filter(|column| wide || !column.wide_only).collect();
                let headers: Vec<String> = shown.iter().map(|c| c.header.to_string()).collect();
                let rows: Vec<Vec<String>> = items
                    .iter()
                    .map(|item| shown.iter().map(|c| (c.read)(item)).collect())
                    .collect();
                self.write(&table(&headers, &rows))
            }
        }
    }

    fn write(&self, text: &str) -> std::io::Result<()> {
        let mut lock = self.stdout.lock();
        lock.write_all(text.as_bytes())?;
        lock.flush()
    }
}

/// What the API wrote, back as JSON: the wire types serialize as they were read.
fn json<S: Serialize + ?Sized>(value: &S) -> Value {
    serde_json::to_value(value).expect("wire types serialize")
}

/// One object as a line per field: its name, padded, then its value (`printable`).
pub fn detail(fields: &[(String, String)]) -> String {
    let width = fields.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (name, value) in fields {
        let name = format!("{}:", printable(name));
        text.push_str(format!("{name:<width$}  {}", printable(value)).trim_end());
        text.push('\n');
    }
    text
}

/// Columns padded to their widest cell, two spaces apart, with the cells `printable`.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let lines: Vec<Vec<String>> = std::iter::once(headers)
        .chain(rows.iter().map(Vec::as_slice))
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let mut widths = vec![0usize; headers.len()];
    for row in &lines {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in &lines {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    text
}

/// Text without control characters (C0, DEL, C1; terminal escapes start with ESC), so that
/// it cannot drive the terminal it is shown on.
pub fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// One CSV record (RFC 4180): fields are `inert`, and quoted when they hold commas,
/// semicolons (the separator of some locales), quotes, tabs or line breaks.
pub fn csv_row<S: AsRef<str>>(fields: &[S]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|field| {
            let field = inert(field.as_ref());
            if field.contains([',', ';', '"', '\t', '\n', '\r']) {
                format!("\"{}\"", field.replace('"', "\"\""))
            } else {
                field.into_owned()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

/// A CSV cell a spreadsheet shows rather than runs: one starting with `=`, `+`, `-`, `@`, a
/// tab or a carriage return gets a leading `'` (OWASP's advice), unless it is a plain number
/// such as `-1` or `-0.5`.
fn inert(cell: &str) -> Cow<'_, str> {
    let formula = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let number = cell.parse::<f64>().is_ok()
        && cell.bytes().all(|byte| byte.is_ascii_digit() || b"+-.eE".contains(&byte));
    if formula && !number { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

/// A JSON value as YAML (block style): keys plain where YAML reads them back as the same
/// string, strings double-quoted (which YAML reads as JSON does).
pub fn yaml(value: &Value) -> String {
    let mut text = String::new();
    write_yaml(value, 0, &mut text);
    text
}

fn write_yaml(value: &Value, indent: usize, text: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = yaml_key(key);
                match value {
                    Value::Object(inner) if !inner.is_empty() => {
                        text.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(value, indent + 2, text);
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        text.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(value, indent, text);
                    }
                    _ => text.push_str(&format!("{pad}{key}: {}\n", flow(value))),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::Object(inner) if !inner.is_empty() => {
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        // The first key goes on the dash's line.
                        text.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
                    }
                    Value::Array(inner) if !inner.is_empty() => {
                        text.push_str(&format!("{pad}-\n"));
                        write_yaml(item, indent + 2, text);
                    }
                    _ => text.push_str(&format!("{pad}- {}\n", flow(item))),
                }
            }
        }
        _ => text.push_str(&format!("{pad}{}\n", flow(value))),
    }
}

/// `key` plain when YAML reads it back as that string (letters, digits, `_`, `-`, `.`, `/`,
/// starting with a letter or `_`, and not a word YAML reads as something else), else quoted.
fn yaml_key(key: &str) -> String {
    let plain = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "nan" | "inf"
        );
    if plain { key.to_string() } else { serde_json::to_string(key).expect("keys print") }
}

/// Scalars and empty collections in flow style, as JSON writes them.
fn flow(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON prints")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_csv_quotes_what_needs_it() {
        let headers = vec!["NAME".to_string(), "STATE".to_string()];
        let rows = vec![vec!["web-1".to_string(), "running".to_string()]];
        assert_eq!(table(&headers, &rows), "NAME   STATE\nweb-1  running\n");
        assert_eq!(csv_row(&["a", "b,c", "say \"hi\""]), "a,\"b,c\",\"say \"\"hi\"\"\"\n");
    }

    #[test]
    fn csv_cells_that_spreadsheets_would_run_are_defused() {
        let cell = |text: &str| csv_row(&[text]);
        assert_eq!(cell("=1+2"), "'=1+2\n");
        assert_eq!(cell("@SUM(A1:A9)"), "'@SUM(A1:A9)\n");
        assert_eq!(cell("+1+cmd|' /C calc'!A0"), "'+1+cmd|' /C calc'!A0\n");
        assert_eq!(cell("-2+3"), "'-2+3\n");
        assert_eq!(cell("-inf"), "'-inf\n");
        assert_eq!(cell("\t=1"), "\"'\t=1\"\n");
        assert_eq!(cell("\r=1"), "\"'\r=1\"\n");
        assert_eq!(cell("=HYPERLINK(\"http://x\")"), "\"'=HYPERLINK(\"\"http://x\"\")\"\n");
        // A tag as the wide and CSV formats show it, its key first.
        let tags = scalar(&json!({ "=cmd|'/C calc'!A0": "x" }));
        assert_eq!(cell(tags.as_str()), "'=cmd|'/C calc'!A0=x\n");
        // Where `;` separates cells, it cannot start a new cell either.
        assert_eq!(cell("a;=1+2"), "\"a;=1+2\"\n");
        // Plain numbers stay numbers; the rest is untouched.
        for plain in ["-1", "-0.5", "+3", "-1e5", "web-1", "team=blue", ""] {
            assert_eq!(cell(plain), format!("{plain}\n"));
        }
    }

    #[test]
    fn table_cells_cannot_drive_the_terminal() {
        let headers = vec!["NAME".to_string(), "TAGS".to_string()];
        let tag = "\u{1b}[31mred\u{1b}[0m\r\nx\u{9b}2J\u{7f}\u{7}\tend";
        let rows = vec![vec!["web\u{1b}[1A-1".to_string(), scalar(&json!({ "team": tag }))]];
        assert_eq!(table(&headers, &rows), "NAME      TAGS\nweb[1A-1  team=[31mred[0mx2Jend\n");
        // JSON and YAML keep the value exact, escaped.
        assert!(yaml(&json!({ "team": tag })).contains(r#""\u001b[31mred"#));
    }

    #[test]
    fn yaml_nests_objects_and_lists() {
        let value = json!([{ "id": "a", "tags": { "team": "blue" }, "ips": ["1.2.3.4"], "none": null, "empty": {} }]);
        let expected = "- empty: {}\n  id: \"a\"\n  ips:\n  - \"1.2.3.4\"\n  none: null\n  tags:\n    team: \"blue\"\n";
        assert_eq!(yaml(&value), expected);
        // A key YAML would read as something else, or not at all, stays quoted.
        let odd = json!({ "yes": 1, "a b": 2, "*": 3, "1x": 4, "k: v": 5, "corral:job-id": 6 });
        let expected =
            "\"*\": 3\n\"1x\": 4\n\"a b\": 2\n\"corral:job-id\": 6\n\"k: v\": 5\n\"yes\": 1\n";
        assert_eq!(yaml(&odd), expected);
    }
}
