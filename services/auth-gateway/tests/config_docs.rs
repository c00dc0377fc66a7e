//! The defaults in `--help`, `.env.sample` and the README's configuration
//! table are the ones `Config::default()` really has: documentation that
//! drifts from the code misleads an operator exactly when it matters.

use service_common::settings::documented;
use std::path::Path;

#[test]
fn documented_defaults_are_the_real_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_auth-gateway"))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let mut defaults = documented::defaults(&auth_gateway::config::Config::default(), "GW_");
    // Read as DATABASE_URL, without the prefix, and required (no default).
    defaults.remove("GW_DATABASE_URL");
    let problems =
        documented::check_documents(&root, &help.stdout, &defaults, "GW_", &["GW_CONFIG"]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
