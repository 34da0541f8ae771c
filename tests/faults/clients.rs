//! Misbehaving clients against an in-process sluice: a body slower than the server's
//! deadline, and a thousand requests on one HTTP/2 connection. (Slow headers:
//! `tests/api/server_limits.rs`. A slow reader and idle connections: `process.rs`, which
//! measures a real process's memory.)

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{chat_body, http_client};
use crate::rig::{FaultApp, timed};

#[tokio::test]
async fn a_body_slower_than_the_deadline_is_answered_408() {
    timed("slow body", async {
        let f = FaultApp::start("body_read_timeout_ms = 500").await;
        let body = chat_body("chat", json!({})).to_string();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            f.key,
            body.len()
        );
        let mut stream = TcpStream::connect(f.app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        // Ten bytes a second: the whole body would take many seconds.
        let trickle = async move {
            for b in body.as_bytes() {
                if writer.write_all(&[*b]).await.is_err() {
                    // The server has answered and closed: the answer decides.
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let answer = async move {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            // Read until the whole answer (head and JSON body) is in, or the server closes.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(10), reader.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"}}") {
                    break;
                }
            }
            out
        };
        let (out, (), ()) = tokio::select! {
            r = async { tokio::join!(answer, f.unaffected(), async {}) } => r,
            () = trickle => panic!("the whole body was read: no deadline"),
        };
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        // The request never reached the pipeline: the two normal requests are the only
        // records.
        f.app.wait_written(2).await;
        let records = f.app.store().await.records(None, 10).await.unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.status == 200));
    })
    .await;
}

#[tokio::test]
async fn a_thousand_requests_on_one_http2_connection() {
    timed("1 000 requests on one HTTP/2 connection", async {
        // Two connections at most: the HTTP/2 client's one, and one for a normal request
        // beside it. A second HTTP/2 connection would wait, unaccepted, and time out.
        let f = FaultApp::start("max_connections = 2").await;
        let h2 = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let url = format!("{}/v1/chat/completions", f.app.base);
        let calls = (0..1000).map(|i| {
            let request = h2
                .post(&url)
                .bearer_auth(&f.key)
                .json(&chat_body("chat", json!({"stream": i % 2 == 0})))
                .timeout(Duration::from_secs(60));
            async move {
                let r = request.send().await.expect("answered");
                let version = r.version();
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap();
                (version, status, body)
            }
        });
        let normal = async {
            let r = http_client()
                .post(&url)
                .bearer_auth(&f.key)
                .json(&chat_body("chat", json!({})))
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        };
        let (answers, normal) = tokio::join!(futures_util::future::join_all(calls), normal);
        assert_eq!(normal, 200);
        for (version, status, body) in &answers {
            assert_eq!(*version, reqwest::Version::HTTP_2);
            assert_eq!(*status, 200, "{body:?}");
            assert!(String::from_utf8_lossy(body).contains("world"), "{body:?}");
        }
        f.app.wait_written(1001).await;
        let records = f
            .app
            .store()
            .await
            .records(Some("chat"), 2000)
            .await
            .unwrap();
        assert_eq!(records.len(), 1001);
        assert!(
            records
                .iter()
                .all(|r| r.outcome == sluice::types::Outcome::Ok)
        );
    })
    .await;
}
