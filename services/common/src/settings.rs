//! Checks both services apply to their settings, and reading back where
//! they document them.

/// `Ok` for a finite, positive number of seconds; otherwise the reason.
pub fn positive_seconds(secs: f64) -> Result<(), String> {
    if secs.is_finite() && secs > 0.0 {
        Ok(())
    } else {
        Err(format!("must be a positive number of seconds, got {secs}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_positive_finite_seconds_pass() {
        assert!(positive_seconds(0.5).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
    }
}

/// Where a service documents its settings, read back so a test can hold
/// them to `Config::default()`: `--help`, `.env.sample` and the README's
/// configuration tables must all give each variable its real default.
pub mod documented {
    use serde::Serialize;
    use std::collections::BTreeMap;

    /// Variable name → default for every setting of `config` (`None` for
    /// one unset by default): sections and keys upper-cased and joined with
    /// `__` after `prefix`, as the environment names them.
    pub fn defaults(config: &impl Serialize, prefix: &str) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        if let Ok(value) = serde_json::to_value(config) {
            flatten(&value, prefix.trim_end_matches('_'), &mut out);
        }
        out
    }

    fn flatten(value: &serde_json::Value, name: &str, out: &mut BTreeMap<String, Option<String>>) {
        match value {
            serde_json::Value::Object(fields) => {
                for (key, field) in fields {
                    let separator = if name.contains('_') { "__" } else { "_" };
                    let child = format!("{name}{separator}{}", key.to_ascii_uppercase());
                    flatten(field, &child, out);
                }
            }
            serde_json::Value::Null => {
                out.insert(name.to_owned(), None);
            }
            serde_json::Value::String(text) => {
                out.insert(name.to_owned(), Some(text.clone()));
            }
            other => {
                out.insert(name.to_owned(), Some(other.to_string()));
            }
        }
    }

    /// `NAME  description [default]` lines of a `--help` environment list.
    pub fn from_help(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|line| {
                let line = line.trim();
                let (name, rest) = line.split_once(char::is_whitespace)?;
                let default = rest.trim_end().strip_suffix(']')?.rsplit_once('[')?.1;
                Some((name.trim_end_matches(',').to_owned(), default.to_owned()))
            })
            .collect()
    }

    /// `NAME=value` lines of an env file (comments skipped).
    pub fn from_env_file(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect()
    }

    /// Rows `| `NAME` | `default` | meaning |` of the README tables; a row
    /// naming two variables (`` `A` / `B` ``) gives two defaults the same way.
    pub fn from_readme(text: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|line| line.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(names), Some(defaults)) = (cells.get(1), cells.get(2)) else {
                continue;
            };
            let names = ticked(names);
            let defaults = ticked(defaults);
            if names.len() == defaults.len() {
                for (name, default) in names.into_iter().zip(defaults) {
                    out.insert(name.to_owned(), default.to_owned());
                }
            }
        }
        out
    }

    /// The `backticked` parts of a table cell.
    fn ticked(cell: &str) -> Vec<&str> {
        cell.split('`').skip(1).step_by(2).collect()
    }

    /// Whether two spellings of a default are the same value (`10` and
    /// `10.0` are).
    pub fn same(documented: &str, actual: &str) -> bool {
        match (documented.parse::<f64>(), actual.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => documented == actual,
        }
    }

    /// Every mismatch between the defaults and the three documents: a
    /// variable with a default missing from one, or documented with another
    /// default. A
    /// variable that a document names but the configuration does not know
    /// is reported too (`known_elsewhere` lists those read outside it, such
    /// as `RUST_LOG`).
    pub fn mismatches(
        defaults: &BTreeMap<String, Option<String>>,
        documents: &[(&str, BTreeMap<String, String>)],
        prefix: &str,
        known_elsewhere: &[&str],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (document, found) in documents {
            for (name, actual) in defaults {
                let Some(actual) = actual else { continue };
                match found.get(name) {
                    None => problems.push(format!("{document}: {name} is not documented")),
                    Some(documented) if !same(documented, actual) => problems.push(format!(
                        "{document}: {name} documented as {documented:?}, default is {actual:?}"
                    )),
                    Some(_) => {}
                }
            }
            for name in found.keys() {
                if name.starts_with(prefix)
                    && !defaults.contains_key(name)
                    && !known_elsewhere.contains(&name.as_str())
                {
                    problems.push(format!("{document}: {name} is not a setting"));
                }
            }
        }
        problems
    }

    /// [`mismatches`] between `defaults` and the three documents of a
    /// service: its `--help` output, and `.env.sample` and `README.md` in
    /// the repository at `root`.
    pub fn check_documents(
        root: &std::path::Path,
        help: &[u8],
        defaults: &BTreeMap<String, Option<String>>,
        prefix: &str,
        known_elsewhere: &[&str],
    ) -> Vec<String> {
        let read = |name: &str| {
            std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| format!("<{name}: {e}>"))
        };
        let documents = [
            ("--help", from_help(&String::from_utf8_lossy(help))),
            (".env.sample", from_env_file(&read(".env.sample"))),
            ("README.md", from_readme(&read("README.md"))),
        ];
        mismatches(defaults, &documents, prefix, known_elsewhere)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[derive(Serialize)]
        struct Server {
            port: u16,
            grace_secs: f64,
            public_url: Option<String>,
        }

        #[derive(Serialize)]
        struct Config {
            server: Server,
        }

        #[test]
        fn documents_are_read_and_compared() {
            let config = Config {
                server: Server {
                    port: 80,
                    grace_secs: 10.0,
                    public_url: None,
                },
            };
            let defaults = defaults(&config, "X_");
            assert_eq!(defaults["X_SERVER__PORT"].as_deref(), Some("80"));
            assert_eq!(defaults["X_SERVER__PUBLIC_URL"], None);
            let help = from_help(
                "Environment:\n  X_SERVER__PORT  port [80]\n  X_SERVER__GRACE_SECS  wait [10]\n",
            );
            let env = from_env_file("# port\nX_SERVER__PORT=80\nX_SERVER__GRACE_SECS=10\n");
            let readme = from_readme(
                "| `X_SERVER__PORT` / `X_SERVER__GRACE_SECS` | `81` / `10` | Port. |\n",
            );
            let problems = mismatches(
                &defaults,
                &[("help", help), ("env", env), ("readme", readme)],
                "X_",
                &[],
            );
            assert_eq!(
                problems,
                ["readme: X_SERVER__PORT documented as \"81\", default is \"80\""]
            );
        }
    }
}
