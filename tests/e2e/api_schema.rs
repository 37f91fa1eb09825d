//! The local API does what its OpenAPI document says, checked by Schemathesis against a
//! real daemon: every request the document allows is taken (or refused for a reason the
//! document lists: 401, 403, 404, 409, 429), every request it forbids is refused with a
//! 4xx, and nothing answers 5xx (issue 17, point 7).

use std::process::Command;

use crate::harness::{Lab, run};

/// Schemathesis's command (PyPI `schemathesis`; `.ci/run` installs it).
const ST: &str = "schemathesis";

#[test]
fn the_local_api_takes_exactly_what_its_document_says() {
    let found = run(Command::new("sh").args(["-c", &format!("command -v {ST}")]))
        .status
        .success();
    assert!(
        found,
        "this test needs Schemathesis (`pip install schemathesis`; .ci/run installs it)"
    );
    let mut lab = Lab::new("schema", 1);
    // Host mode: party calls go to the embedded control plane at the advertised address.
    lab.start_daemon(1, &["--control-listen", "0.0.0.0:8667"]);
    let token = std::fs::read_to_string(lab.state_dir(1).join("api.token")).expect("api token");
    let out = run(Lab::in_ns(&lab.player_ns(1), ST)
        .args([
            "run",
            "http://127.0.0.1:8666/api/v1/openapi.json",
            "--header",
            &format!("x-lanrage-token: {}", token.trim()),
            "--checks",
            "all",
            "--max-examples",
            "60",
            "--continue-on-failure",
            // Reproducible: the same requests on every run.
            "--seed",
            "170017",
            // A WebSocket answers 101 and then streams: not something HTTP checks can judge
            // (the browser test and api tests drive it).
            "--exclude-path",
            "/api/v1/events",
            "--no-color",
        ])
        // Schemathesis keeps a cache in its working directory: the lab's, not the source tree.
        .current_dir(lab.dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Schemathesis found requests the daemon and its document disagree on:\n{stdout}\n{stderr}"
    );
    // It really ran: operations were tested and cases generated.
    assert!(
        stdout.contains("Tested:") && stdout.contains("generated"),
        "Schemathesis ran no test:\n{stdout}"
    );
}
