//! The admin API's OpenAPI document against a real sluice.
//!
//! Each test starts sluice in-process on port 0 (a temporary SQLite file, the built-in mock
//! provider with two versions of one route, and a policy of one long step with shadow copies
//! and a declared feedback metric), fetches `GET /admin/v1/openapi.json`, and checks:
//!
//! 1. the document is OpenAPI 3.1, is the one generated from the code
//!    (`sluice::http::openapi`), and lists exactly the operations sluice has;
//! 2. it matches the router: every documented admin operation answers 401 without the admin
//!    token (so it is routed and guarded), methods a documented path lacks answer 405, and
//!    paths the document does not list answer 404;
//! 3. every documented operation runs with its credential, in a sensible order, and each
//!    answer's status is one the document lists for that operation, its media type one the
//!    document lists for that status, and its JSON body valid against the documented schema
//!    (validated with the `jsonschema` crate against the document's own `components`).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use sluice::app::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ADMIN_TOKEN: &str = "openapi-admin-token";

/// Every operation sluice serves, as (method, path) in the document's spelling.
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/admin/v1/workspaces"),
    ("get", "/admin/v1/workspaces"),
    ("post", "/admin/v1/workspaces/{id}/keys"),
    ("get", "/admin/v1/workspaces/{id}/keys"),
    ("delete", "/admin/v1/workspaces/{id}/keys/{key_id}"),
    ("put", "/admin/v1/workspaces/{id}/limits"),
    ("get", "/admin/v1/workspaces/{id}/limits"),
    ("get", "/admin/v1/routes"),
    ("get", "/admin/v1/routes/{route}/stats"),
    ("get", "/admin/v1/cluster"),
    ("post", "/admin/v1/rollouts"),
    ("get", "/admin/v1/rollouts"),
    ("get", "/admin/v1/rollouts/{id}"),
    ("get", "/admin/v1/rollouts/{id}/events"),
    ("get", "/admin/v1/rollouts/{id}/shadow"),
    ("put", "/admin/v1/rollouts/{id}/pins/{workspace}"),
    ("delete", "/admin/v1/rollouts/{id}/pins/{workspace}"),
    ("post", "/admin/v1/rollouts/{id}/pause"),
    ("post", "/admin/v1/rollouts/{id}/resume"),
    ("post", "/admin/v1/rollouts/{id}/promote"),
    ("post", "/admin/v1/rollouts/{id}/abort"),
    ("get", "/admin/v1/openapi.json"),
    ("post", "/v1/chat/completions"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model}"),
    ("post", "/v1/responses"),
    ("get", "/v1/responses/{id}"),
    ("delete", "/v1/responses/{id}"),
    ("get", "/v1/responses/{id}/input_items"),
    ("post", "/v1/responses/{id}/cancel"),
    ("post", "/v1/embeddings"),
    ("post", "/v1/completions"),
    ("post", "/v1/moderations"),
    ("post", "/v1/images/generations"),
    ("post", "/v1/images/edits"),
    ("post", "/v1/images/variations"),
    ("post", "/v1/audio/transcriptions"),
    ("post", "/v1/audio/translations"),
    ("post", "/v1/audio/speech"),
    ("post", "/v1/feedback"),
    ("get", "/metrics"),
    ("get", "/healthz"),
];

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

const POLICY: &str = r#"
description = "openapi test: one long step, shadow copies, a conversion metric"
interval = "100ms"
max_step_hold = "1h"

[[steps]]
weight = 30
hold = "1h"
min_requests = 1000000

[gates.error_rate]
max_ratio = 1.2

[shadow]
rate = 1.0
from = "stable"
to = "canary"
max_usd_per_hour = 100.0
keep = 100

[feedback.converted]
kind = "binary"
good = "higher"
"#;

fn config(db_url: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
# The test probes every operation without a credential, far past the default lockout.
auth_failure_burst = 100000

[database]
url = "{db_url}"

[admin]
token_env = "SLUICE_ADMIN_TOKEN"

[providers.sim]
kind = "mock"

[versions.sim-a]
provider = "sim"
model = "sim-a"
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
mock = {{ ttft_ms = 1, tokens_per_s = 5000, output_tokens = 12, error_rate = 0.0 }}

[versions.sim-b]
provider = "sim"
model = "sim-b"
price = {{ input_per_mtok = 0.20, output_per_mtok = 0.80 }}
mock = {{ ttft_ms = 1, tokens_per_s = 5000, output_tokens = 16, error_rate = 0.0 }}

[routes.chat]
stable = "sim-a"
"#
    )
}

fn env(name: &str) -> Option<String> {
    (name == "SLUICE_ADMIN_TOKEN").then(|| ADMIN_TOKEN.to_owned())
}

/// One answer, read whole.
struct Answer {
    status: u16,
    content_type: Option<String>,
    text: String,
    json: Value,
}

/// sluice on port 0, its document, and what the test has run so far.
struct Sluice {
    base: String,
    http: reqwest::Client,
    doc: Value,
    /// Documented operations run with their credential, as (method, path template).
    ran: Mutex<BTreeSet<(String, String)>>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Sluice {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/openapi.toml"), POLICY).unwrap();
        let db_url = format!("sqlite://{}", dir.path().join("sluice.db").display());
        let config_path = dir.path().join("sluice.toml");
        let settings = sluice::settings::parse(&config_path, &config(&db_url), &env)
            .expect("the test config is valid");
        let server = Server::build(settings).await.expect("sluice starts");
        let base = format!("http://{}", server.local_addr());
        let (stop_tx, stop_rx) = oneshot::channel();
        #[expect(
            clippy::disallowed_methods,
            reason = "the gateway under test, awaited when the test stops it"
        )]
        let handle = tokio::spawn(server.run_until_stopped(async move {
            let _ = stop_rx.await;
        }));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let response = http
            .get(format!("{base}/admin/v1/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let doc: Value = response.json().await.expect("the document is JSON");
        Self {
            base,
            http,
            doc,
            ran: Mutex::default(),
            stop: Some(stop_tx),
            server: Some(handle),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// A raw request to `path` (path and query), with a bearer token and a JSON body if given.
    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            text,
            json,
        }
    }

    /// Runs the documented operation `method template` on `path` and checks the answer
    /// against the document: a listed status, a listed media type, a body fitting the schema.
    async fn run(
        &self,
        method: &str,
        template: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let answer = self.send(method, path, token, body.as_ref()).await;
        let operation = &self.doc["paths"][template][method];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        let what = format!(
            "{} {path} answered {}",
            method.to_uppercase(),
            answer.status
        );
        let responses = &operation["responses"];
        let response = match responses.get(answer.status.to_string()) {
            Some(r) => r,
            None => responses.get("default").unwrap_or_else(|| {
                panic!(
                    "{what}, which the document does not list ({:?}): {}",
                    responses.as_object().unwrap().keys().collect::<Vec<_>>(),
                    answer.text
                )
            }),
        };
        let response = self.resolve(response);
        match response.get("content").and_then(Value::as_object) {
            None => assert!(
                answer.text.is_empty(),
                "{what} with a body the document does not list: {}",
                answer.text
            ),
            Some(content) => {
                let media = answer.content_type.as_deref().unwrap_or_default();
                let listed = content.get(media).unwrap_or_else(|| {
                    panic!("{what} as {media}, not one of {:?}", content.keys())
                });
                if media == "application/json" {
                    assert!(
                        !answer.json.is_null(),
                        "{what} with a body that is not JSON: {}",
                        answer.text
                    );
                    self.validate(&listed["schema"], &answer.json, &what);
                }
            }
        }
        if token.is_some() || operation["security"] == json!([]) {
            self.ran
                .lock()
                .unwrap()
                .insert((method.to_owned(), template.to_owned()));
        }
        answer
    }

    /// An admin call with the admin token; the concrete path's template is given first.
    async fn admin(&self, method: &str, template: &str, path: &str, body: Option<Value>) -> Answer {
        self.run(
            method,
            &format!("/admin/v1{template}"),
            &format!("/admin/v1{path}"),
            Some(ADMIN_TOKEN),
            body,
        )
        .await
    }

    /// Follows a `$ref` to `#/components/...`.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => self
                .doc
                .pointer(r.strip_prefix('#').unwrap())
                .unwrap_or_else(|| panic!("dangling {r}")),
            None => v,
        }
    }

    /// Validates `instance` against a schema of the document (its `$ref`s resolved in the
    /// document's own `components`).
    fn validate(&self, schema: &Value, instance: &Value, what: &str) {
        let errors = schema_errors(&self.doc, schema, instance);
        assert!(
            errors.is_empty(),
            "{what} with a body that does not fit the document:\n  {}\n{instance:#}",
            errors.join("\n  ")
        );
    }
}

/// The ways `instance` misses `schema`, a schema of `doc` whose references point into it.
fn schema_errors(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).expect("the document's schemas compile");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// A concrete path for a template: every `{param}` becomes `x1`.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push_str("x1");
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Whether `path` is an instance of `template` (a `{param}` stands for any one segment).
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str())
                || ["head", "options", "trace"].contains(&&**method)
            {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_exactly_the_operations_sluice_serves() {
    let app = Sluice::start().await;
    let doc = &app.doc;
    // The served document is the one generated from the code (utoipa's derives, with the
    // gateway's hand-kept part merged in).
    assert_eq!(doc, sluice::http::openapi::served());
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "sluice admin API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let schemes = &doc["components"]["securitySchemes"];
    for scheme in ["adminToken", "gatewayKey"] {
        assert_eq!(schemes[scheme]["type"], "http", "{scheme}");
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }

    let expected: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented(doc), expected);

    let mut operation_ids = BTreeSet::new();
    for (method, path) in &expected {
        let item = &doc["paths"][path];
        let operation = &item[method];
        let id = operation["operationId"].as_str().unwrap();
        assert!(
            operation_ids.insert(id.to_owned()),
            "operationId {id} twice"
        );
        assert!(operation["summary"].is_string() && operation["description"].is_string());
        let tags = operation["tags"].as_array().unwrap();
        let is_gateway = !path.starts_with("/admin/v1/");
        assert_eq!(
            tags.contains(&json!("gateway")),
            is_gateway,
            "{method} {path}"
        );

        // Credentials: admin token under /admin/v1, none for the document, /metrics, /healthz.
        let security = &operation["security"];
        let want = match path.as_str() {
            "/admin/v1/openapi.json" | "/metrics" | "/healthz" => json!([]),
            p if p.starts_with("/admin/v1/") => json!([{"adminToken": []}]),
            _ => json!([{"gatewayKey": []}]),
        };
        assert_eq!(security, &want, "{method} {path}");
        if want != json!([]) {
            assert!(
                operation["responses"].get("401").is_some(),
                "{method} {path} lacks 401"
            );
        }

        // Every `{param}` in the path is declared once, as a required path parameter.
        let params: Vec<Value> = item["parameters"]
            .as_array()
            .into_iter()
            .chain(operation["parameters"].as_array())
            .flatten()
            .map(|p| app.resolve(p).clone())
            .collect();
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let declared: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true);
                p["name"].as_str().unwrap()
            })
            .collect();
        assert_eq!(declared, in_path, "{method} {path}");

        // Every response has a description; every body has a schema that compiles.
        for (status, response) in operation["responses"].as_object().unwrap() {
            let response = app.resolve(response);
            assert!(
                response["description"].is_string(),
                "{method} {path} {status}"
            );
            for (media, content) in response["content"].as_object().into_iter().flatten() {
                assert!(
                    content["schema"].is_object(),
                    "{method} {path} {status} {media}"
                );
            }
        }
        if let Some(body) = operation.get("requestBody") {
            let content = body["content"].as_object().unwrap();
            assert!(!content.is_empty(), "{method} {path}: a body of no type");
            for (media, c) in content {
                assert!(c["schema"].is_object(), "{method} {path} body {media}");
            }
        }
    }
    assert!(doc["paths"]["/admin/v1/rollouts/{id}/shadow"]["get"]["parameters"].is_array());

    // The schemas bite: an empty object is not a rollout, nor an error.
    for name in [
        "Rollout",
        "Error",
        "Workspace",
        "NewKey",
        "Event",
        "ShadowPage",
    ] {
        let schema = json!({"$ref": format!("#/components/schemas/{name}")});
        assert!(
            !schema_errors(doc, &schema, &json!({})).is_empty(),
            "{name} accepts {{}}"
        );
    }
    // The document validates itself as the answer of its own operation.
    app.run(
        "get",
        "/admin/v1/openapi.json",
        "/admin/v1/openapi.json",
        None,
        None,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_document_matches_the_router_every_admin_operation_is_guarded_and_nothing_else_is_routed()
 {
    let app = Sluice::start().await;
    let doc = app.doc.clone();
    let ops = documented(&doc);

    for (method, template) in &ops {
        let path = concrete(template);
        let body = matches!(method.as_str(), "post" | "put").then(|| json!({}));
        let public = doc["paths"][template][method]["security"] == json!([]);
        if public {
            let answer = app.send(method, &path, None, None).await;
            assert_eq!(answer.status, 200, "{method} {path}: {}", answer.text);
            continue;
        }
        for token in [None, Some("not-the-token")] {
            let answer = app.send(method, &path, token, body.as_ref()).await;
            assert_eq!(
                answer.status, 401,
                "{method} {path} with {token:?}: {}",
                answer.text
            );
            let want = if template.starts_with("/admin/v1/") {
                "invalid_admin_token"
            } else if token.is_none() {
                "missing_api_key"
            } else {
                "invalid_api_key"
            };
            assert_eq!(answer.json["error"]["code"], want, "{method} {path}");
        }
        // The gateway key of no workspace is no admin token either, and vice versa.
        let wrong = if template.starts_with("/admin/v1/") {
            "sk-sluice-0000000000000000"
        } else {
            ADMIN_TOKEN
        };
        let answer = app.send(method, &path, Some(wrong), body.as_ref()).await;
        assert_eq!(answer.status, 401, "{method} {path}");
    }

    // A documented path answers 405 to every method the document does not list for it, to a
    // caller holding the path's credential (authentication runs before method routing: a
    // caller without one learns nothing about the path, not even its methods).
    let workspace = app
        .admin(
            "post",
            "/workspaces",
            "/workspaces",
            Some(json!({"id": "methods"})),
        )
        .await;
    assert_eq!(workspace.status, 201, "{}", workspace.text);
    let key = app
        .admin(
            "post",
            "/workspaces/{id}/keys",
            "/workspaces/methods/keys",
            None,
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let gateway_key = key.json["key"].as_str().unwrap().to_owned();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_none() {
                let credential = if template.starts_with("/admin/v1/") {
                    ADMIN_TOKEN
                } else {
                    gateway_key.as_str()
                };
                let answer = app
                    .send(method, &concrete(template), Some(credential), None)
                    .await;
                assert_eq!(answer.status, 405, "{method} {template}: {}", answer.text);
                assert_eq!(
                    answer.json["error"]["code"], "method_not_allowed",
                    "{method} {template}: every error is OpenAI-shaped: {}",
                    answer.text
                );
            }
        }
    }

    // Paths the document does not list answer 404 (with the token too: nothing undocumented
    // does anything). The router spells the four rollout commands as one pattern,
    // `/rollouts/{id}/{operation}`, which answers 404 to an unknown command and 405 to
    // methods other than POST: those probes may answer 405.
    let mut probes: Vec<String> = [
        "/admin/v1",
        "/admin/v1/",
        "/admin/v1/nope",
        "/admin/v1/openapi.yaml",
        "/admin/v1/workspaces/x1",
        "/admin/v1/workspaces/x1/keys/x1/x1",
        "/admin/v1/routes/x1",
        "/admin/v1/rollouts/x1/pins",
        "/admin/v1/rollouts/x1/bogus",
        "/admin/v1/rollouts/x1/pins/x1/x1",
        "/admin/v1/rollouts/x1/events/x1",
        "/admin/v1/keys",
        "/admin/v1/stats",
        "/admin/v2/workspaces",
        "/v1/nope",
        "/v1/images",
        "/v1/audio/x1",
        "/v1/responses/x1/extra",
        "/v1/chat/completions/extra",
    ]
    .map(String::from)
    .to_vec();
    probes.extend(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|t| t.starts_with("/admin/v1/"))
            .map(|t| format!("{}/extra", concrete(t))),
    );
    let mut probed = 0;
    for probe in &probes {
        // `/admin/v1/rollouts/extra` is `/rollouts/{id}` with an id: documented, not a probe.
        if doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .any(|t| fits(t, probe))
        {
            continue;
        }
        probed += 1;
        let operation_pattern = {
            let parts: Vec<&str> = probe.trim_start_matches('/').split('/').collect();
            parts.len() == 5 && parts[..3] == ["admin", "v1", "rollouts"]
        };
        for method in METHODS {
            for token in [Some(ADMIN_TOKEN), None] {
                let answer = app.send(method, probe, token, None).await;
                let ok = answer.status == 404
                    || (operation_pattern && (answer.status == 405 || answer.status == 401));
                assert!(
                    ok,
                    "{method} {probe} (token: {}) answered {}: {}",
                    token.is_some(),
                    answer.status,
                    answer.text
                );
                if answer.status == 404 {
                    assert_eq!(
                        answer.json["error"]["code"], "not_found",
                        "{method} {probe}"
                    );
                }
            }
        }
    }
    assert!(probed >= 20, "only {probed} probes");
    app.stop().await;
}

#[tokio::test]
async fn every_documented_operation_runs_and_answers_as_the_document_says() {
    let app = Sluice::start().await;

    // Workspaces.
    let ws = app
        .admin(
            "post",
            "/workspaces",
            "/workspaces",
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(ws.status, 201, "{}", ws.text);
    assert_eq!(ws.json["id"], "acme");
    let again = app
        .admin(
            "post",
            "/workspaces",
            "/workspaces",
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!(again.status, 409);
    let bad = app
        .admin(
            "post",
            "/workspaces",
            "/workspaces",
            Some(json!({"id": "Not OK"})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let unknown_field = app
        .admin(
            "post",
            "/workspaces",
            "/workspaces",
            Some(json!({"id": "b", "x": 1})),
        )
        .await;
    assert_eq!(unknown_field.status, 400);
    let list = app.admin("get", "/workspaces", "/workspaces", None).await;
    assert_eq!(list.status, 200);
    assert!(
        list.json["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == "acme")
    );

    // Keys.
    let key = app
        .admin(
            "post",
            "/workspaces/{id}/keys",
            "/workspaces/acme/keys",
            None,
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.text);
    let key_id = key.json["id"].as_str().unwrap().to_owned();
    let secret = key.json["key"].as_str().unwrap().to_owned();
    let nobody = app
        .admin(
            "post",
            "/workspaces/{id}/keys",
            "/workspaces/nobody/keys",
            None,
        )
        .await;
    assert_eq!(nobody.status, 404);
    let keys = app
        .admin(
            "get",
            "/workspaces/{id}/keys",
            "/workspaces/acme/keys",
            None,
        )
        .await;
    assert_eq!(keys.status, 200);
    assert!(!keys.text.contains(&secret), "a key list shows a key");
    let nobody = app
        .admin(
            "get",
            "/workspaces/{id}/keys",
            "/workspaces/nobody/keys",
            None,
        )
        .await;
    assert_eq!(nobody.status, 404);

    // Routes.
    let routes = app.admin("get", "/routes", "/routes", None).await;
    assert_eq!(routes.status, 200);
    assert_eq!(routes.json["data"][0]["route"], "chat");
    let stats = app
        .admin("get", "/routes/{route}/stats", "/routes/chat/stats", None)
        .await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json["scope"], "replica");
    let everywhere = app
        .admin(
            "get",
            "/routes/{route}/stats",
            "/routes/chat/stats?scope=cluster",
            None,
        )
        .await;
    assert_eq!(everywhere.status, 200);
    assert_eq!(everywhere.json["scope"], "cluster");
    let bad_scope = app
        .admin(
            "get",
            "/routes/{route}/stats",
            "/routes/chat/stats?scope=planet",
            None,
        )
        .await;
    assert_eq!(bad_scope.status, 400);
    let none = app
        .admin("get", "/routes/{route}/stats", "/routes/nope/stats", None)
        .await;
    assert_eq!(none.status, 404);

    // The replicas: a single SQLite process is the whole gateway.
    let cluster = app.admin("get", "/cluster", "/cluster", None).await;
    assert_eq!(cluster.status, 200);
    assert_eq!(cluster.json["mode"], "single");

    // A rollout, and the refusals the document lists for starting one.
    let start = |canary: &str, policy: &str, route: &str| json!({"route": route, "canary": canary, "policy": policy});
    let refused = [
        (start("sim-b", "openapi", "nope"), 404),
        (start("nope", "openapi", "chat"), 422),
        (start("sim-b", "nope", "chat"), 422),
        (start("sim-a", "openapi", "chat"), 422),
        (json!({"route": "chat"}), 400),
    ];
    for (body, status) in refused {
        let answer = app
            .admin("post", "/rollouts", "/rollouts", Some(body.clone()))
            .await;
        assert_eq!(answer.status, status, "{body}: {}", answer.text);
    }
    let rollout = app
        .admin(
            "post",
            "/rollouts",
            "/rollouts",
            Some(start("sim-b", "openapi", "chat")),
        )
        .await;
    assert_eq!(rollout.status, 201, "{}", rollout.text);
    assert_eq!(rollout.json["state"], "progressing");
    let id = rollout.json["id"].as_str().unwrap().to_owned();
    let twice = app
        .admin(
            "post",
            "/rollouts",
            "/rollouts",
            Some(start("sim-b", "openapi", "chat")),
        )
        .await;
    assert_eq!(twice.status, 409);

    // The gateway, so that the rollout has traffic, shadow pairs and feedback.
    let models = app
        .run("get", "/v1/models", "/v1/models", Some(&secret), None)
        .await;
    assert_eq!(models.status, 200);
    let mut request_id = String::new();
    for i in 0..12 {
        let body = json!({"model": "chat", "messages": [{"role": "user", "content": format!("hello {i}")}]});
        let answer = app
            .run(
                "post",
                "/v1/chat/completions",
                "/v1/chat/completions",
                Some(&secret),
                Some(body),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        request_id = answer.json["id"].as_str().unwrap_or_default().to_owned();
    }
    let streamed = app
        .run(
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some(&secret),
            Some(json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text.contains("data: "));
    let unknown_model = app
        .run(
            "post",
            "/v1/chat/completions",
            "/v1/chat/completions",
            Some(&secret),
            Some(json!({"model": "nope", "messages": []})),
        )
        .await;
    assert_eq!(unknown_model.status, 404);
    // The request id feedback needs is the `x-request-id` header.
    let raw = app
        .http
        .post(format!("{}/v1/chat/completions", app.base))
        .bearer_auth(&secret)
        .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "buy"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 200);
    let header_id = raw.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!header_id.is_empty() && !request_id.is_empty());
    let feedback = app
        .run(
            "post",
            "/v1/feedback",
            "/v1/feedback",
            Some(&secret),
            Some(json!({"request_id": header_id, "metric": "converted", "value": true})),
        )
        .await;
    assert_eq!(feedback.status, 202, "{}", feedback.text);
    let undeclared = app
        .run(
            "post",
            "/v1/feedback",
            "/v1/feedback",
            Some(&secret),
            Some(json!({"request_id": header_id, "metric": "rating", "value": 4})),
        )
        .await;
    assert_eq!(undeclared.status, 422);
    let unknown_request = app
        .run(
            "post",
            "/v1/feedback",
            "/v1/feedback",
            Some(&secret),
            Some(json!({"request_id": "req_nope", "metric": "converted", "value": true})),
        )
        .await;
    assert_eq!(unknown_request.status, 404);
    for path in ["/metrics", "/healthz"] {
        let answer = app.run("get", path, path, None, None).await;
        assert_eq!(answer.status, 200);
    }

    // The rest of the OpenAI surface, against the built-in mock.
    let model = app
        .run(
            "get",
            "/v1/models/{model}",
            "/v1/models/chat",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!((model.status, &model.json["id"]), (200, &json!("chat")));
    let no_model = app
        .run(
            "get",
            "/v1/models/{model}",
            "/v1/models/nope",
            Some(&secret),
            None,
        )
        .await;
    assert_eq!(no_model.status, 404);
    let created = app
        .run(
            "post",
            "/v1/responses",
            "/v1/responses",
            Some(&secret),
            Some(json!({"model": "chat", "input": "hello"})),
        )
        .await;
    assert_eq!(created.status, 200, "{}", created.text);
    assert_eq!(created.json["status"], "completed");
    let response_id = created.json["id"].as_str().unwrap().to_owned();
    let streamed = app
        .run(
            "post",
            "/v1/responses",
            "/v1/responses",
            Some(&secret),
            Some(json!({"model": "chat", "input": "hello", "stream": true})),
        )
        .await;
    assert_eq!(streamed.status, 200);
    assert!(streamed.text.contains("event: response.completed"));
    let stored = [
        (
            "get",
            "/v1/responses/{id}",
            format!("/v1/responses/{response_id}"),
        ),
        (
            "get",
            "/v1/responses/{id}/input_items",
            format!("/v1/responses/{response_id}/input_items"),
        ),
        (
            "post",
            "/v1/responses/{id}/cancel",
            format!("/v1/responses/{response_id}/cancel"),
        ),
        (
            "delete",
            "/v1/responses/{id}",
            format!("/v1/responses/{response_id}"),
        ),
    ];
    for (method, template, path) in &stored {
        let answer = app.run(method, template, path, Some(&secret), None).await;
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.text);
        let unknown = app
            .run(
                method,
                template,
                &path.replace(&response_id, "resp_nope"),
                Some(&secret),
                None,
            )
            .await;
        assert_eq!(unknown.status, 404, "{method} {template} of an unknown id");
    }
    let embedded = app
        .run(
            "post",
            "/v1/embeddings",
            "/v1/embeddings",
            Some(&secret),
            Some(json!({"model": "chat", "input": ["a", "b"]})),
        )
        .await;
    assert_eq!(embedded.status, 200, "{}", embedded.text);
    assert_eq!(embedded.json["data"].as_array().unwrap().len(), 2);
    let no_input = app
        .run(
            "post",
            "/v1/embeddings",
            "/v1/embeddings",
            Some(&secret),
            Some(json!({"model": "nope", "input": "a"})),
        )
        .await;
    assert_eq!(no_input.status, 404);
    // The mock serves no legacy completions, moderations, images or audio: each reaches it
    // (routed by `model`) and its 404 comes back; an unknown model is sluice's own 404 and
    // a body without a model a 400.
    for path in [
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/audio/speech",
    ] {
        let answer = app
            .run(
                "post",
                path,
                path,
                Some(&secret),
                Some(json!({"model": "chat", "prompt": "hi"})),
            )
            .await;
        assert_eq!(answer.status, 404, "{path}: {}", answer.text);
        assert!(
            answer.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("mock provider"),
            "{path}: {}",
            answer.text
        );
        let unknown = app
            .run(
                "post",
                path,
                path,
                Some(&secret),
                Some(json!({"model": "nope"})),
            )
            .await;
        assert_eq!(unknown.json["error"]["code"], "model_not_found", "{path}");
        let no_model = app
            .run("post", path, path, Some(&secret), Some(json!({})))
            .await;
        assert_eq!(no_model.status, 400, "{path}: {}", no_model.text);
    }

    // Reading the rollout.
    let list = app.admin("get", "/rollouts", "/rollouts", None).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json["data"][0]["id"], id.as_str());
    let one = app
        .admin("get", "/rollouts/{id}", &format!("/rollouts/{id}"), None)
        .await;
    assert_eq!(one.status, 200);
    let missing = app
        .admin("get", "/rollouts/{id}", "/rollouts/ro_nope", None)
        .await;
    assert_eq!(missing.status, 404);
    let events = app
        .admin(
            "get",
            "/rollouts/{id}/events",
            &format!("/rollouts/{id}/events"),
            None,
        )
        .await;
    assert_eq!(events.status, 200);
    assert_eq!(events.json["data"][0]["kind"], "started");
    let missing = app
        .admin(
            "get",
            "/rollouts/{id}/events",
            "/rollouts/ro_nope/events",
            None,
        )
        .await;
    assert_eq!(missing.status, 404);

    // Shadow pairs arrive after their primaries; page through them one at a time.
    let shadow = "/rollouts/{id}/shadow";
    let mut first = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let page = app
            .admin(
                "get",
                shadow,
                &format!("/rollouts/{id}/shadow?limit=1"),
                None,
            )
            .await;
        assert_eq!(page.status, 200);
        if !page.json["data"].as_array().unwrap().is_empty() {
            first = Some(page);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.expect("a shadow pair within 60 s");
    let next = first.json["next"].as_i64().expect("a next page");
    let second = app
        .admin(
            "get",
            shadow,
            &format!("/rollouts/{id}/shadow?after={next}&limit=1"),
            None,
        )
        .await;
    assert_eq!(second.status, 200);
    let bad_query = app
        .admin(
            "get",
            shadow,
            &format!("/rollouts/{id}/shadow?limit=many"),
            None,
        )
        .await;
    assert_eq!(bad_query.status, 400);
    let missing = app
        .admin("get", shadow, "/rollouts/ro_nope/shadow", None)
        .await;
    assert_eq!(missing.status, 404);

    // Pins.
    let pins = "/rollouts/{id}/pins/{workspace}";
    let pin_path = format!("/rollouts/{id}/pins/acme");
    let pinned = app
        .admin("put", pins, &pin_path, Some(json!({"arm": "canary"})))
        .await;
    assert_eq!(pinned.status, 200, "{}", pinned.text);
    assert_eq!(pinned.json["pins"]["acme"], "canary");
    let bad_arm = app
        .admin("put", pins, &pin_path, Some(json!({"arm": "middle"})))
        .await;
    assert_eq!(bad_arm.status, 400);
    let unpinned = app.admin("delete", pins, &pin_path, None).await;
    assert_eq!(unpinned.status, 200);
    assert!(unpinned.json["pins"].get("acme").is_none());
    let no_pin = app.admin("delete", pins, &pin_path, None).await;
    assert_eq!(no_pin.status, 404);

    // Operator commands: pause, resume, promote; then a second rollout to abort.
    let command = |op: &str| {
        (
            format!("/rollouts/{{id}}/{op}"),
            format!("/rollouts/{id}/{op}"),
        )
    };
    let expect = [
        ("pause", 200, "paused"),
        ("pause", 409, ""),
        ("resume", 200, "progressing"),
        ("resume", 409, ""),
        ("promote", 200, "promoted"),
        ("abort", 409, ""),
        ("pause", 409, ""),
        ("resume", 409, ""),
        ("promote", 409, ""),
    ];
    for (op, status, state) in expect {
        let (template, path) = command(op);
        let answer = app.admin("post", &template, &path, None).await;
        assert_eq!(answer.status, status, "{op}: {}", answer.text);
        if status == 200 {
            assert_eq!(answer.json["state"], state, "{op}");
        }
    }
    for op in ["pause", "resume", "promote", "abort"] {
        let template = format!("/rollouts/{{id}}/{op}");
        let answer = app
            .admin("post", &template, &format!("/rollouts/ro_nope/{op}"), None)
            .await;
        assert_eq!(answer.status, 404, "{op}");
    }
    let ended = app
        .admin("get", "/rollouts/{id}", &format!("/rollouts/{id}"), None)
        .await;
    assert_eq!(ended.status, 200);
    assert_eq!(ended.json["state"], "promoted");
    let ended_pin = app
        .admin("put", pins, &pin_path, Some(json!({"arm": "stable"})))
        .await;
    assert_eq!(ended_pin.status, 404);
    let routes = app.admin("get", "/routes", "/routes", None).await;
    assert_eq!(routes.json["data"][0]["stable"], "sim-b");

    let back = app
        .admin(
            "post",
            "/rollouts",
            "/rollouts",
            Some(start("sim-a", "openapi", "chat")),
        )
        .await;
    assert_eq!(back.status, 201, "{}", back.text);
    let back_id = back.json["id"].as_str().unwrap().to_owned();
    let aborted = app
        .admin(
            "post",
            "/rollouts/{id}/abort",
            &format!("/rollouts/{back_id}/abort"),
            None,
        )
        .await;
    assert_eq!(aborted.status, 200, "{}", aborted.text);
    assert_eq!(aborted.json["state"], "aborted");
    let events = app
        .admin(
            "get",
            "/rollouts/{id}/events",
            &format!("/rollouts/{id}/events"),
            None,
        )
        .await;
    let kinds: Vec<&str> = events.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in [
        "started", "pinned", "unpinned", "paused", "resumed", "promoted",
    ] {
        assert!(kinds.contains(&kind), "no `{kind}` event in {kinds:?}");
    }
    let list = app.admin("get", "/rollouts", "/rollouts", None).await;
    assert_eq!(list.json["data"].as_array().unwrap().len(), 2);

    // Limits: set, refused when wrong, read back.
    let limits = "/workspaces/{id}/limits";
    let set = app
        .admin(
            "put",
            limits,
            "/workspaces/acme/limits",
            Some(json!({"tokens_per_minute": 1000000, "usd_per_day": 50})),
        )
        .await;
    assert_eq!(set.status, 200);
    let bad = app
        .admin(
            "put",
            limits,
            "/workspaces/acme/limits",
            Some(json!({"burst": 0})),
        )
        .await;
    assert_eq!(bad.status, 400);
    let ghost = app
        .admin(
            "put",
            limits,
            "/workspaces/ghost/limits",
            Some(json!({"burst": 1})),
        )
        .await;
    assert_eq!(ghost.status, 404);
    let got = app
        .admin("get", limits, "/workspaces/acme/limits", None)
        .await;
    assert_eq!(got.json["limits"]["usd_per_day"], 50.0);

    // Revoking the key ends it at once.
    let revoke = "/workspaces/{id}/keys/{key_id}";
    let revoked = app
        .admin(
            "delete",
            revoke,
            &format!("/workspaces/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(revoked.status, 204);
    let again = app
        .admin(
            "delete",
            revoke,
            &format!("/workspaces/acme/keys/{key_id}"),
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    let refused = app
        .run("get", "/v1/models", "/v1/models", Some(&secret), None)
        .await;
    assert_eq!(refused.status, 401);
    let keys = app
        .admin(
            "get",
            "/workspaces/{id}/keys",
            "/workspaces/acme/keys",
            None,
        )
        .await;
    assert!(keys.json["data"][0]["revoked_at_ms"].is_i64());

    // The document itself, and nothing documented left unrun.
    app.run(
        "get",
        "/admin/v1/openapi.json",
        "/admin/v1/openapi.json",
        None,
        None,
    )
    .await;
    let ran = app.ran.lock().unwrap().clone();
    let unrun: Vec<_> = documented(&app.doc).difference(&ran).cloned().collect();
    assert!(unrun.is_empty(), "documented but never run: {unrun:?}");
    app.stop().await;
}
