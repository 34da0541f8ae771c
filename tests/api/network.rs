//! Enterprise networks: a provider behind a private CA (`ca_file`) and an egress proxy
//! (`proxy`), tested with a local TLS upstream whose certificate a test CA (rcgen) signed
//! and a local HTTP CONNECT proxy that records where it tunnelled to.

use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// A CA (its PEM) and a server certificate for 127.0.0.1 and localhost that it signed.
struct TestPki {
    ca_pem: String,
    server: tokio_rustls::TlsAcceptor,
}

fn pki() -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sluice test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        server: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    }
}

/// Reads one HTTP/1.1 request head (and its body, by content-length) from `stream`.
async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// An HTTPS upstream on 127.0.0.1 answering every request with one chat completion.
#[expect(
    clippy::disallowed_methods,
    reason = "the test upstream and its connections live as long as the test"
)]
async fn tls_upstream(acceptor: tokio_rustls::TlsAcceptor) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA aborts the handshake: nothing to serve.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let request = read_request(&mut tls).await;
                log.lock().unwrap().push(request);
                let body = json!({"id": "chatcmpl-tls", "object": "chat.completion", "created": 1, "model": "ok",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": OK_TEXT}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}})
                .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// An HTTP CONNECT proxy; records each tunnel's target.
#[expect(
    clippy::disallowed_methods,
    reason = "the test proxy and its tunnels live as long as the test"
)]
async fn connect_proxy() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = Arc::new(Mutex::new(Vec::new()));
    let log = targets.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let head = read_request(&mut client).await;
                let target = head
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("CONNECT "))
                    .and_then(|l| l.split(' ').next())
                    .unwrap_or_default()
                    .to_owned();
                log.lock().unwrap().push(target.clone());
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (port, targets)
}

#[tokio::test]
async fn a_provider_trusts_its_private_ca_and_reaches_its_upstream_through_its_proxy() {
    let pki = pki();
    let (tls_port, requests) = tls_upstream(pki.server.clone()).await;
    let (proxy_port, tunnels) = connect_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "test-ca.pem", &pki.ca_pem);
    let extra = format!(
        r#"
[providers.private]
kind = "openai"
base_url = "https://127.0.0.1:{tls_port}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 5000
ca_file = "{ca}"
proxy = "http://127.0.0.1:{proxy_port}"

[providers.untrusting]
kind = "openai"
base_url = "https://127.0.0.1:{tls_port}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 5000

[versions.private]
provider = "private"
model = "ok"
[versions.untrusting]
provider = "untrusting"
model = "ok"

[routes.private]
stable = "private"
[routes.untrusting]
stable = "untrusting"
"#,
        ca = ca_file.display()
    );
    let app = TestApp::spawn_with_config(&extra).await;
    let key = app.key("acme").await;

    let r = app.chat_raw(&key, chat_body("private", json!({}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], OK_TEXT);
    assert_eq!(
        tunnels.lock().unwrap().clone(),
        vec![format!("127.0.0.1:{tls_port}")],
        "the call went through the proxy"
    );
    let seen = requests.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].starts_with("POST /v1/chat/completions"),
        "{}",
        seen[0]
    );

    // Without the CA file the same upstream is not trusted.
    let r = app.chat_raw(&key, chat_body("untrusting", json!({}))).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    assert_eq!(requests.lock().unwrap().len(), 1);
}

/// `sluice serve` as an operator starts it, killed when dropped.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A provider without `proxy` follows the standard variables of sluice's environment:
/// `HTTPS_PROXY` sends its calls through the proxy, `NO_PROXY` exempts a host. Run on the
/// real binary, as the variables are the process's.
#[tokio::test]
async fn a_provider_without_its_own_proxy_follows_https_proxy_and_no_proxy() {
    let pki = pki();
    let (tls_port, requests) = tls_upstream(pki.server.clone()).await;
    let (proxy_port, tunnels) = connect_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_file(dir.path(), "test-ca.pem", &pki.ca_pem);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[database]
url = "sqlite://{db}"

[admin]
token_env = "SLUICE_ADMIN_TOKEN"

[providers.proxied]
kind = "openai"
base_url = "https://127.0.0.1:{tls_port}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 5000
ca_file = "{ca}"

[providers.exempt]
kind = "openai"
base_url = "https://localhost:{tls_port}/v1"
api_key_env = "TEST_UPSTREAM_KEY"
timeout_ms = 5000
ca_file = "{ca}"

[versions.proxied]
provider = "proxied"
model = "ok"
[versions.exempt]
provider = "exempt"
model = "ok"

[routes.proxied]
stable = "proxied"
[routes.exempt]
stable = "exempt"
"#,
        db = dir.path().join("sluice.db").display(),
        ca = ca.display()
    );
    let config_path = write_file(dir.path(), "sluice.toml", &config);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TEST_UPSTREAM_KEY", "sk-upstream")
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy_port}"))
        .env("NO_PROXY", "localhost")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for var in [
        "https_proxy",
        "http_proxy",
        "HTTP_PROXY",
        "ALL_PROXY",
        "all_proxy",
        "no_proxy",
    ] {
        command.env_remove(var);
    }
    let _served = Served(command.spawn().unwrap());

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "sluice serve did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let admin = |path: &str| {
        http.post(format!("{base}/admin/v1{path}"))
            .bearer_auth(ADMIN_TOKEN)
    };
    let created = admin("/workspaces")
        .json(&json!({"id": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let key: Value = admin("/workspaces/acme/keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let chat = |route: &str| {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({"model": route, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };

    assert_eq!(chat("proxied").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        tunnels.lock().unwrap().clone(),
        vec![format!("127.0.0.1:{tls_port}")],
        "HTTPS_PROXY applies"
    );
    assert_eq!(chat("exempt").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        tunnels.lock().unwrap().len(),
        1,
        "NO_PROXY exempts localhost"
    );
    assert_eq!(
        requests.lock().unwrap().len(),
        2,
        "both calls reached the upstream"
    );
}
