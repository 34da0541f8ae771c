//! The `sluice` command as a user runs it.

use std::process::Command;

use crate::helpers::*;

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

#[test]
fn config_check_accepts_the_shipped_configs() {
    let out = sluice()
        .args(["config", "check", "--config", "sluice.toml"])
        .env("SLUICE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sluice()
        .args(["config", "check", "--config", "examples/openai.toml"])
        .env("SLUICE_ADMIN_TOKEN", "t")
        .env("OPENAI_API_KEY", "sk-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_check_names_file_and_key_of_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "bad.toml",
        "[providers.p]\nkind = \"openai\"\nbase_url = \"ftp://x\"\n[routes.chat]\nstable = \"nope\"\n[extra]\n",
    );
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("SLUICE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for want in [
        format!("{file}: extra: unknown key"),
        format!("{file}: providers.p.base_url: `ftp://x` is not an http(s) URL"),
        format!("{file}: routes.chat.stable: unknown version `nope`"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
}

#[test]
fn config_check_suggests_the_key_a_typo_meant() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "typo.toml",
        "[server]\nlisten = \"localhost:8093\"\nmax_body_byte = 10\n[providers.sim]\nkind = \"mock\"\n\
         [versions.v1]\nprovider = \"sim\"\nmodel = \"m\"\n[routes.chat]\nstabel = \"v1\"\n",
    );
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("SLUICE_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for want in [
        format!("{file}: server.max_body_byte: unknown key; did you mean `max_body_bytes`?"),
        format!("{file}: routes.chat.stabel: unknown key; did you mean `stable`?"),
    ] {
        assert!(err.contains(&want), "missing `{want}` in:\n{err}");
    }
}

#[tokio::test]
async fn keys_create_prints_a_working_key() {
    let app = TestApp::spawn().await;
    app.key("acme").await;
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        sluice()
            .args(["keys", "create", "--workspace", "acme", "--url", &base])
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("sk-sluice-"));
    let response = app
        .chat_raw(&key, chat_body("chat", serde_json::json!({})))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn output_into_a_pipe_closed_early_ends_the_command_quietly() {
    use std::process::Stdio;
    let app = TestApp::spawn().await;
    // A workspace, so that the listing has a line to write.
    app.key("acme").await;
    let base = app.base.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = sluice()
            .args(["workspaces", "list", "--url", &base])
            .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes, as `| head -1` does after a line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    let (status, stderr) = status;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status:?}: {stderr}");
}
