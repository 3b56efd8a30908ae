//! The real `tollgate` binary as a person at a shell meets it: `serve --help`, output into a
//! closed pipe, configuration errors, and logs that are redirected rather than on a terminal.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

fn tollgate() -> Command {
    let mut command = Command::new(BIN);
    // Only what each test sets: the caller's TOLLGATE_* would be read as configuration.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TOLLGATE_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG").env_remove("NO_COLOR");
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn serve_help_says_the_defaults_and_that_no_config_refuses_everything() {
    let out = tollgate().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "127.0.0.1:50051",
        "127.0.0.1:9090",
        "tollgate.redb",
        "every request is refused",
        "TOLLGATE_CONFIG",
    ] {
        assert!(help.contains(expected), "missing {expected:?} in:\n{help}");
    }
}

#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    // `tollgate guardrail test ... | head -0`: the reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[guardrail.local]\npii = [{ type = \"US_SOCIAL_SECURITY_NUMBER\", action = \"BLOCK\" }]\n",
    )
    .unwrap();
    let out = tollgate()
        .args(["guardrail", "test", "my ssn is 219-09-9999", "--config"])
        .arg(&config)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
}

#[test]
fn a_bad_value_is_reported_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        "[server]\nhttp_listen = \"127.0.0.1:9090\"\n\n[policy]\nfail_mode = \"sometimes\"\n",
    )
    .unwrap();
    let out = tollgate()
        .args(["config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:5: policy.fail_mode: unknown variant", config.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("default."), "{stderr}");
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ngrpc_listen = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
             [store]\nbackend = \"memory\"\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = tollgate()
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || {
        let mut text = String::new();
        std::fs::File::open(&log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read().contains("INFO") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    assert!(text.contains("INFO"), "no log lines: {text:?}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes in a redirected log: {text:?}"
    );
}
