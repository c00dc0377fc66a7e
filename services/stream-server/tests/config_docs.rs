//! The defaults in `--help`, `.env.sample` and the README's configuration
//! table are the ones `Config::default()` really has: documentation that
//! drifts from the code misleads an operator exactly when it matters.

use service_common::settings::documented;
use std::path::Path;

#[test]
fn documented_defaults_are_the_real_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_stream-server"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let defaults = documented::defaults(&stream_server::config::Config::default(), "DS_");
    let problems =
        documented::check_documents(&root, &help.stdout, &defaults, "DS_", &["DS_CONFIG"]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
