//! A small runner for data-driven test scripts (the format of cockroachdb/datadriven,
//! as etcd-io/raft uses it).
//!
//! A script is a sequence of cases:
//!
//! ```text
//! # comments and blank lines between cases are kept as they are
//! command arg key=value key=(a,b)
//! ----
//! expected output, up to the first blank line
//! ```
//!
//! An expected output that itself contains blank lines is written between
//! `----`/`----` and `----`/`----`. Run with `REWRITE=1` to regenerate every expected
//! output from the actual one (then review the diff).

use std::fmt::Write as _;
use std::path::Path;

/// One parsed command: `cmd` plus arguments in order.
#[derive(Debug, Clone)]
pub struct Case {
    pub pos: String,
    pub cmd: String,
    pub args: Vec<Arg>,
}

/// `key`, `key=value` or `key=(v1,v2)`.
#[derive(Debug, Clone)]
pub struct Arg {
    pub key: String,
    pub vals: Vec<String>,
}

impl Case {
    /// The values of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.args.iter().find(|a| a.key == key).map(|a| a.vals.as_slice())
    }

    /// Parses the single value of `key`.
    pub fn scan<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        let v = self.get(key)?;
        let s = v.first().unwrap_or_else(|| panic!("{}: {key} needs a value", self.pos));
        Some(s.parse().unwrap_or_else(|_| panic!("{}: cannot parse {key}={s}", self.pos)))
    }

    /// Parses every value of `key` (for `key=(1,2,3)`).
    pub fn scan_list<T: std::str::FromStr>(&self, key: &str) -> Option<Vec<T>> {
        let v = self.get(key)?;
        Some(
            v.iter()
                .map(|s| s.parse().unwrap_or_else(|_| panic!("{}: cannot parse {key} element {s}", self.pos)))
                .collect(),
        )
    }

    /// Bare arguments (no `=`) in order, as parsed numbers: `process-ready 1 2 3`.
    pub fn ids(&self) -> Vec<u64> {
        self.args.iter().filter(|a| a.vals.is_empty()).filter_map(|a| a.key.parse().ok()).collect()
    }

    /// Bare arguments as strings.
    pub fn bare(&self) -> Vec<&str> {
        self.args.iter().filter(|a| a.vals.is_empty()).map(|a| a.key.as_str()).collect()
    }
}

fn parse_args(line: &str) -> (String, Vec<Arg>) {
    let mut toks = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    let mut in_quote = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            '(' if !in_quote => {
                depth += 1;
                cur.push(c);
            }
            ')' if !in_quote => {
                depth -= 1;
                cur.push(c);
            }
            ' ' if depth == 0 && !in_quote => {
                if !cur.is_empty() {
                    toks.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        toks.push(cur);
    }
    let cmd = toks.remove(0);
    let args = toks
        .into_iter()
        .map(|t| match t.split_once('=') {
            None => Arg { key: t.trim_matches('"').to_string(), vals: Vec::new() },
            Some((k, v)) => {
                let vals = if v.starts_with('(') && v.ends_with(')') {
                    v[1..v.len() - 1].split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                } else {
                    vec![v.trim_matches('"').to_string()]
                };
                Arg { key: k.to_string(), vals }
            }
        })
        .collect();
    (cmd, args)
}

/// Runs every case of the script at `path` through `run`, comparing (or, with
/// `REWRITE=1`, rewriting) the expected output.
///
/// # Panics
/// On the first case whose output differs, showing both.
pub fn run_file(path: &Path, mut run: impl FnMut(&Case) -> String) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let rewrite = std::env::var_os("REWRITE").is_some();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut cases = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            i += 1;
            continue;
        }
        let pos = format!("{}:{}", path.display(), i + 1);
        let (cmd, args) = parse_args(line.trim());
        out.push_str(line);
        out.push('\n');
        i += 1;
        assert!(i < lines.len() && lines[i] == "----", "{pos}: expected ---- after the command");
        i += 1;
        let mut expected = String::new();
        let blocky = i < lines.len() && lines[i] == "----";
        if blocky {
            i += 1;
            while i + 1 < lines.len() && !(lines[i] == "----" && lines[i + 1] == "----") {
                expected.push_str(lines[i]);
                expected.push('\n');
                i += 1;
            }
            i += 2;
        } else {
            while i < lines.len() && !lines[i].trim().is_empty() {
                expected.push_str(lines[i]);
                expected.push('\n');
                i += 1;
            }
        }
        let case = Case { pos: pos.clone(), cmd, args };
        let mut actual = run(&case);
        if !actual.is_empty() && !actual.ends_with('\n') {
            actual.push('\n');
        }
        if actual.is_empty() {
            actual.push_str("ok\n");
        }
        cases += 1;
        out.push_str("----\n");
        if actual.lines().any(|l| l.trim().is_empty()) {
            let _ = write!(out, "----\n{actual}----\n----\n");
        } else {
            out.push_str(&actual);
        }
        if !rewrite && actual != expected {
            panic!(
                "{pos}: output differs for `{}`\n--- expected\n{expected}--- actual\n{actual}(run with REWRITE=1 to accept)",
                line.trim()
            );
        }
    }
    assert!(cases > 0, "{}: no test cases", path.display());
    if rewrite {
        std::fs::write(path, out).unwrap_or_else(|e| panic!("rewriting {}: {e}", path.display()));
    }
}
