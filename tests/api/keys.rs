//! Workspaces and keys through the admin API, on SQLite and PostgreSQL.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::*;

async fn key_lifecycle(db: Db) {
    let app = TestApp::spawn_on(db).await;
    let (status, body) = app
        .admin(Method::POST, "/workspaces", Some(json!({"id": "acme"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["id"], "acme");
    let (status, _) = app
        .admin(Method::POST, "/workspaces", Some(json!({"id": "acme"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let (status, created) = app.admin(Method::POST, "/workspaces/acme/keys", None).await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk-sluice-"));

    // Stored only as a hash.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&app.db_url).await.unwrap();
    let rows = sqlx::query("SELECT key_hash, key_prefix FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let hash: String = rows[0].get(0);
    assert_eq!(hash, sluice::auth::hash_key(&key));
    assert!(!hash.contains(&key[10..]));
    pool.close().await;

    // Listing shows ids and prefixes, never the key.
    let (_, listed) = app.admin(Method::GET, "/workspaces/acme/keys", None).await;
    let text = listed.to_string();
    assert!(text.contains(&key_id) && !text.contains(&key), "{text}");

    let ok = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(ok.status(), 200);

    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/workspaces/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let refused = app.chat_raw(&key, chat_body("chat", json!({}))).await;
    assert_eq!(
        refused.status(),
        401,
        "a revoked key stops working at once on this replica"
    );
    let (status, _) = app
        .admin(
            Method::DELETE,
            &format!("/workspaces/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoking twice");
}

#[tokio::test]
async fn keys_are_created_used_and_revoked_on_sqlite() {
    key_lifecycle(Db::Sqlite).await;
}

#[tokio::test]
async fn keys_are_created_used_and_revoked_on_postgres() {
    if let Some(url) = pg_url() {
        key_lifecycle(Db::Postgres(url)).await;
    }
}

#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    let app = TestApp::spawn().await;
    let url = format!("{}/admin/v1/workspaces", app.base);
    let none = app
        .http
        .post(&url)
        .json(&json!({"id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    let wrong = app.http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_admin_token");
    // A gateway key is not an admin token either.
    let key = app.key("acme").await;
    let with_key = app.http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_eq!(with_key.status(), 401);
}

#[tokio::test]
async fn bad_workspace_requests_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .admin(
            Method::POST,
            "/workspaces",
            Some(json!({"id": "Not Valid!"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Not Valid!")
    );
    let (status, _) = app
        .admin(Method::POST, "/workspaces", Some(json!({"name": "acme"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .admin(Method::POST, "/workspaces/ghost/keys", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"]["message"].as_str().unwrap().contains("ghost"));
}
