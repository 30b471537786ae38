//! Paths, tools and parsing shared by the operator-kit tests: where deploy/ is, the Prometheus
//! binaries, the rules file and its derived copies, the metric names a PromQL text uses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::{Mapping, Value};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A file under deploy/.
pub fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// The shipped alerting and recording rules.
pub fn rules_path() -> PathBuf {
    deploy("prometheus/sockudo-rules.yml")
}

/// A binary of Debian's `prometheus` package (`prometheus`, `promtool`): `$env` when set, else
/// the first on `PATH`. Missing is a failure that says how to get it, never a skip.
pub fn tool(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` was not found on PATH: these tests need Debian's `prometheus` package \
             (apt-get install prometheus; .ci/run installs it), or set {env} to the binary"
        )
    })
}

/// Run `cmd`; returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "sockudo-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parse a YAML file.
pub fn load_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Every rule (recording and alerting) of the shipped rules file, as YAML mappings.
pub fn rules() -> Vec<Mapping> {
    let doc = load_yaml(&rules_path());
    let groups = doc["groups"].as_sequence().expect("groups").clone();
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .map(|r| r.as_mapping().expect("rule is a mapping").clone())
        .collect()
}

/// The string field `key` of a rule, if any.
pub fn field<'a>(rule: &'a Mapping, key: &str) -> Option<&'a str> {
    rule.get(key).and_then(Value::as_str)
}

/// The shipped rules file with `edit` applied to every rule, as YAML text. This is how the
/// tests derive their rule files from the shipped one (never a second copy of the rules).
pub fn rules_with(edit: impl Fn(&mut Mapping)) -> String {
    let mut doc = load_yaml(&rules_path());
    for group in doc["groups"].as_sequence_mut().expect("groups") {
        for rule in group["rules"].as_sequence_mut().expect("rules") {
            edit(rule.as_mapping_mut().expect("rule is a mapping"));
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Every PromQL expression of the Grafana dashboard (panel targets and variable queries).
pub fn dashboard_exprs() -> Vec<String> {
    let path = deploy("grafana/sockudo-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    collect_exprs(&doc, &mut out);
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The node's metric names (`sockudo_…`) that a PromQL text reads: identifiers outside
/// quoted strings. Recording rules (`sockudo:…`) are not metric names.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut quoted = false;
    let mut token = String::new();
    let mut flush = |token: &mut String| {
        if token.starts_with("sockudo_") {
            names.insert(std::mem::take(token));
        }
        token.clear();
    };
    for c in expr.chars() {
        if c == '"' {
            quoted = !quoted;
            flush(&mut token);
        } else if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            token.push(c);
        } else {
            flush(&mut token);
        }
    }
    flush(&mut token);
    names
}

/// The metric names a Prometheus text exposition holds (sample names and `# TYPE` names).
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') || line.trim().is_empty() => None,
            None => line.split(['{', ' ']).next(),
        })
        .map(str::to_owned)
        .collect()
}

/// The anchors of docs/operations.md's headings (GitHub's rule: lower case, punctuation
/// dropped, spaces to `-`).
pub fn doc_anchors() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn metric_names_skip_labels_values_and_recordings() {
    let names = metric_names(
        r#"sum by (node_id) (rate(sockudo_a_total{job=~"sockudo_b.*"}[5m])) / sockudo:c:ratio + sockudo_d"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["sockudo_a_total".to_string(), "sockudo_d".to_string()]
    );
}
