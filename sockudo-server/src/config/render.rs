//! docs/configuration.md and sockudo.example.toml, rendered from [`SETTINGS`].
//!
//! Both files are committed; the tests here fail when either differs from what the table
//! renders. After changing the table, rewrite them with
//! `SOCKUDO_WRITE_CONFIG_DOCS=1 cargo test -p sockudo-server --lib config::render`.

use super::reference::{Setting, SETTINGS};

const DOC_HEAD: &str = "# Configuration reference

<!-- Generated from sockudo-server/src/config/reference.rs: edit the table there, then run
SOCKUDO_WRITE_CONFIG_DOCS=1 cargo test -p sockudo-server --lib config::render -->

A node reads its settings in this order, each overriding the one before: built-in defaults,
the TOML file given with `--config`, environment variables, command-line flags. Every value
is checked at start: a bad one stops the node with one line on stderr (exit status 2) naming
the setting, and a setting that cannot apply (a driver not in this build, default-app variables
next to apps from the file) is refused rather than ignored.

Apps come from `[[apps]]` in the file, from `SOCKUDO_DEFAULT_APP_ID` / `_KEY` / `_SECRET`, or
from a database (`APP_MANAGER_DRIVER=postgres|mysql`). With none, the library refuses to start;
only the `sockudo` binary then serves the well-known development app on `127.0.0.1` (with a
warning), because its secret is public.

A commented example with every key: [`sockudo.example.toml`](../sockudo.example.toml).

| TOML key | environment | flag | default | meaning |
|---|---|---|---|---|
";

const TOML_HEAD: &str = "# Sockudo node configuration: every TOML key, with its default.
# Generated from sockudo-server/src/config/reference.rs (docs/configuration.md has the same
# table, environment variables included). Run with `sockudo --config sockudo.toml`;
# environment variables and flags override what is set here.
# Commented keys have no default or only apply to some drivers.
";

fn cell(s: &str) -> String {
    if s.is_empty() {
        "–".to_owned()
    } else if s == "–" || s.contains('`') || s.contains(' ') {
        s.replace('|', "\\|")
    } else {
        format!("`{s}`")
    }
}

/// docs/configuration.md.
pub fn configuration_markdown() -> String {
    let mut out = DOC_HEAD.to_owned();
    for st in SETTINGS {
        let toml = match st.toml {
            "" => String::new(),
            key => format!("`{key}`"),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&toml),
            cell(st.env),
            cell(st.cli),
            cell(st.default),
            st.meaning.replace('|', "\\|")
        ));
    }
    out
}

/// `text` as `# ` comment lines of at most about 92 columns.
fn comment(text: &str, out: &mut String) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + word.len() + 1 > 92 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

fn entry(st: &Setting, key: &str, out: &mut String) {
    out.push('\n');
    comment(st.meaning, out);
    let env = match st.env {
        "" => String::new(),
        env => format!("env {env}, "),
    };
    comment(
        &format!("{env}default: {}", st.default.replace('`', "")),
        out,
    );
    let prefix = if st.active { "" } else { "# " };
    out.push_str(&format!("{prefix}{key} = {}\n", st.example));
}

/// sockudo.example.toml.
pub fn example_toml() -> String {
    let mut out = TOML_HEAD.to_owned();
    let keyed = || SETTINGS.iter().filter(|s| !s.toml.is_empty());
    for st in keyed().filter(|s| !s.toml.contains('.') && !s.toml.starts_with("apps[]")) {
        entry(st, st.toml, &mut out);
    }
    let mut sections: Vec<&str> = Vec::new();
    for st in keyed() {
        if let Some((section, _)) = st.toml.split_once('.') {
            if !section.starts_with("apps[]") && !sections.contains(&section) {
                sections.push(section);
            }
        }
    }
    for section in sections {
        out.push_str(&format!("\n[{section}]\n"));
        for st in keyed() {
            if let Some(key) = st
                .toml
                .strip_prefix(section)
                .and_then(|k| k.strip_prefix('.'))
            {
                entry(st, key, &mut out);
            }
        }
    }
    out.push_str("\n# One block per app (or SOCKUDO_DEFAULT_APP_* for a single one, or a database).\n[[apps]]\n");
    for st in keyed() {
        if let Some(key) = st.toml.strip_prefix("apps[].") {
            if !key.contains('.') {
                entry(st, key, &mut out);
            }
        }
    }
    out.push_str("\n# Webhook targets of the app above, one block each.\n# [[apps.webhooks]]\n");
    for st in keyed() {
        if let Some(key) = st.toml.strip_prefix("apps[].webhooks[].") {
            entry(st, key, &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::{NodeSettings, ENV_VARS};
    use sockudo_core::app::App;

    /// Compare `committed` with `rendered`; rewrite the file when asked to.
    fn check(path: &str, committed: &str, rendered: &str) {
        if std::env::var_os("SOCKUDO_WRITE_CONFIG_DOCS").is_some() {
            let full = concat!(env!("CARGO_MANIFEST_DIR"), "/../");
            std::fs::write(format!("{full}{path}"), rendered).unwrap();
            return;
        }
        assert!(
            committed == rendered,
            "{path} differs from the table in config/reference.rs: run \
             SOCKUDO_WRITE_CONFIG_DOCS=1 cargo test -p sockudo-server --lib config::render"
        );
    }

    #[test]
    fn configuration_md_is_what_the_table_renders() {
        check(
            "docs/configuration.md",
            include_str!("../../../docs/configuration.md"),
            &configuration_markdown(),
        );
    }

    #[test]
    fn example_toml_is_what_the_table_renders() {
        check(
            "sockudo.example.toml",
            include_str!("../../../sockudo.example.toml"),
            &example_toml(),
        );
    }

    #[test]
    fn the_table_names_every_variable_the_node_reads() {
        let table: Vec<&str> = SETTINGS
            .iter()
            .map(|s| s.env)
            .filter(|e| !e.is_empty())
            .collect();
        let missing: Vec<&&str> = ENV_VARS.iter().filter(|e| !table.contains(e)).collect();
        let extra: Vec<&&str> = table.iter().filter(|e| !ENV_VARS.contains(e)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "missing {missing:?}, unknown {extra:?}"
        );
    }

    /// Every key the example sets is a real key at its real default (deny_unknown_fields
    /// refuses a misspelt key; the comparison catches a wrong default).
    #[test]
    fn the_example_sets_every_active_key_to_the_code_default() {
        let parsed = NodeSettings::from_toml(&example_toml(), "sockudo.example.toml").unwrap();
        parsed.validate().unwrap();
        let mut expected = NodeSettings {
            node_id: parsed.node_id.clone(),
            ..NodeSettings::default()
        };
        expected.apps = vec![App::new("my-app", "my-key", "change-me")];
        assert_eq!(format!("{parsed:?}"), format!("{expected:?}"));
        assert_eq!(parsed.apps[0], expected.apps[0]);
    }

    /// The commented keys are real keys too: uncommented, the example still parses.
    #[test]
    fn the_commented_keys_parse() {
        let all: String = example_toml()
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with("[[") => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        NodeSettings::from_toml(&all, "all keys").unwrap();
    }
}
