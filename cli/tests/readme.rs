//! The README's "Five minutes with Felix" runs as written, against
//! `felix dev`, and does what its comments say: every command succeeds
//! (or exits with the code its comment names), and the lines whose
//! comments name a record print it. A README that drifts from the product
//! fails here rather than in a new user's terminal.

mod common;

use std::path::Path;
use std::process::Command;

use common::Broker;

/// The walkthrough's command lines, as the README shows them (indented
/// code under its heading), without the alias line and comments-only lines.
fn walkthrough(readme: &str) -> Vec<String> {
    let start = readme
        .find("## Five minutes with Felix")
        .expect("the walkthrough's heading");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("    "))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("alias "))
        .map(str::to_owned)
        .collect()
}

/// The exit code a line's comment promises ("exit code 3"), else 0.
fn expected_code(line: &str) -> i32 {
    line.split_once("exit code ")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

/// What a line's output must hold, for the lines whose comments name a
/// record: the queue's redeliveries and its dead letter.
fn expected_output(line: &str) -> Option<&'static str> {
    let comment = line.split_once('#').map(|(_, c)| c)?;
    [
        ("job-1, leased", "job-1"),
        ("job-1 again", "job-1"),
        ("job-2 again", "job-2"),
    ]
    .into_iter()
    .find_map(|(said, shown)| comment.contains(said).then_some(shown))
    .or_else(|| line.contains("jobs.dlq").then_some("job-1"))
}

fn run(dir: &Path, line: &str) -> std::process::Output {
    // `felix` is the binary under test, as the README's alias makes it.
    let script = format!(
        "set -o pipefail\nfelix() {{ {:?} \"$@\"; }}\n{line}",
        env!("CARGO_BIN_EXE_felix")
    );
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env_remove("FELIX_PROFILE")
        .output()
        .expect("bash runs")
}

#[test]
fn the_five_minute_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let lines = walkthrough(&readme);
    assert!(lines.len() >= 20, "the walkthrough was found: {lines:?}");
    let dir = tempfile::tempdir().unwrap();
    // `felix dev` as the README runs it, on a free port, in ./felix-data.
    let _broker = Broker::start(&dir.path().join("felix-data"));
    for line in &lines {
        let out = run(dir.path(), line);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(expected_code(line)),
            "{line}\nstdout: {stdout}\nstderr: {stderr}"
        );
        if let Some(want) = expected_output(line) {
            assert!(stdout.contains(want), "{line}: expected {want:?} in\n{stdout}");
        }
    }
}

#[test]
fn the_walkthrough_parser_reads_comments() {
    assert_eq!(
        expected_code("sleep 5; felix cache get s u   # expired (exit code 3)"),
        3
    );
    assert_eq!(expected_code("felix stream create orders"), 0);
    assert_eq!(
        expected_output("felix group consume jobs   # job-1 again (delivery 2)"),
        Some("job-1")
    );
    assert_eq!(expected_output("felix stream describe orders"), None);
    let lines = walkthrough("## Five minutes with Felix\n\n    alias felix=x\n    # note\n    felix a   # c\n\n## Next\n    felix b\n");
    assert_eq!(lines, vec!["felix a   # c".to_string()]);
}
