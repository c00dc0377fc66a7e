//! The defaults in `--help`, `.env.sample` and the README's configuration
//! table are the ones `Config::default()` really has: documentation that
//! drifts from the code misleads an operator exactly when it matters.

use service_common::settings::documented;
use std::path::Path;

#[test]
fn documented_defaults_are_the_real_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let read = |name: &str| {
        std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_stream-server"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let defaults = documented::defaults(&stream_server::config::Config::default(), "DS_");
    let documents = [
        (
            "--help",
            documented::from_help(&String::from_utf8_lossy(&help.stdout)),
        ),
        (
            ".env.sample",
            documented::from_env_file(&read(".env.sample")),
        ),
        ("README.md", documented::from_readme(&read("README.md"))),
    ];
    let problems = documented::mismatches(&defaults, &documents, "DS_", &["DS_CONFIG"]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
