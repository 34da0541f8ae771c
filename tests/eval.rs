//! `sluice eval` end to end: the shipped suite against the shipped mock versions, a
//! rollout's shadow pairs from a real SQLite store, and the LLM-as-judge path against a
//! real HTTP upstream on port 0 that plays both versions and the judge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use sluice::eval::{self, EvalArgs};
use sluice::rollout::machine::Position;
use sluice::store::{Actor, NewEvent, RolloutRow, ShadowPair, Store};
use sluice::types::{Arm, RolloutState};

fn args(config: &Path, out: &Path) -> EvalArgs {
    EvalArgs {
        rollout: None,
        suite: None,
        versions: Vec::new(),
        config: config.to_owned(),
        out: Some(out.to_owned()),
        judge: None,
        guardrails: None,
        concurrency: 8,
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-4)
}

#[tokio::test]
async fn the_shipped_suite_compares_the_shipped_mock_versions() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(Path::new("sluice.toml"), out.path());
    a.suite = Some(PathBuf::from("evals/support-bot.jsonl"));
    a.versions = vec!["sim-small".into(), "sim-large".into()];
    a.guardrails = Some("default".into());
    let written = eval::evaluate(&a, false).await.unwrap();
    assert_eq!(written.json, out.path().join("report.json"));
    let r = read_json(&written.json);

    assert_eq!(r["format"], 1);
    assert_eq!(r["source"]["kind"], "suite");
    assert_eq!(r["source"]["cases"], 20);
    assert_eq!(r["versions"][0]["name"], "sim-small");
    assert_eq!(r["versions"][1]["name"], "sim-large");
    // The request with a card number is blocked by the default policy's input rule.
    assert_eq!(r["guardrails"]["policy"], "default");
    assert_eq!(r["guardrails"]["chosen_by"], "--guardrails");
    let small = &r["versions"][0];
    let large = &r["versions"][1];
    assert_eq!(small["guardrails"]["input"]["no-card-numbers"], 1);
    assert_eq!(small["guardrails"]["blocked_input"], 1);
    for v in [small, large] {
        assert_eq!(v["requests"], 19);
        // sim-large fails 1 % of calls by design.
        assert_eq!(
            v["answered"].as_u64().unwrap() + v["errors"].as_u64().unwrap(),
            19
        );
        // Three requests ask for JSON (mock answers are words: they fail), three offer
        // tools (no tool call, which fits): half pass.
        assert!(v["schema"]["trials"].as_u64().unwrap() <= 6);
        assert!(v["schema"]["successes"].as_u64().unwrap() <= 3);
    }
    assert_eq!(small["schema"]["trials"], 6);
    assert_eq!(small["schema"]["successes"], 3);
    // The mock's answer lengths are fixed per version: 60 and 90 words.
    assert_eq!(small["completion_tokens"]["mean"], 60.0);
    assert_eq!(large["completion_tokens"]["mean"], 90.0);
    assert_eq!(small["length_chars"]["p50"], 334.0);
    assert_eq!(large["length_chars"]["p50"], 503.0);
    // Cost per request is the version's price applied to its tokens.
    let prompt = small["prompt_tokens"]["mean"].as_f64().unwrap();
    assert!(prompt > 20.0, "{prompt}");
    let cost = (prompt * 0.15 + 60.0 * 0.60) / 1e6;
    assert!(close(&small["cost_usd_per_request"]["mean"], cost));
    assert!(small["latency_ms"]["p50"].as_f64().unwrap() >= 300.0);
    assert!(large["latency_ms"]["p50"].as_f64().unwrap() >= 1000.0);
    // 334 and 503 characters fall in different half-octave bins: fully divergent.
    let d = &r["divergence"];
    assert_eq!(d["length"]["jsd"], 1.0);
    assert_eq!(d["length"]["flagged"], true);
    assert_eq!(d["finish_reason"]["jsd"], 0.0);
    assert_eq!(d["finish_reason"]["flagged"], false);
    assert_eq!(d["tool_calls"]["jsd"], 0.0);
    assert_eq!(d["tool_calls"]["categories"], json!(["(no tool call)"]));
    assert_eq!(r["agreement"]["successes"], 0);
    let expectations = &r["expectations"];
    assert_eq!(expectations["cases"], 19);
    assert!(expectations["by_property"]["max_chars"][0]["trials"].as_u64() > Some(10));
    assert!(r["judge"].is_null());
    assert_eq!(r["cases"].as_array().unwrap().len(), 20);

    // The counts agree: 20 cases, one blocked, 19 sent to each version; the blocked case
    // is shown as blocked, not as an error of either version.
    let summary = eval::summary::table(&written.report);
    assert!(
        summary
            .contains("(20 requests · 1 blocked by an input guardrail · 19 sent to each version)"),
        "{summary}"
    );
    assert!(
        summary.contains("guardrails: `default` (chosen by --guardrails)"),
        "{summary}"
    );
    let answered = summary
        .lines()
        .find(|l| l.starts_with("answered / sent"))
        .unwrap();
    assert!(answered.contains("19/19"), "{summary}");
    let html = std::fs::read_to_string(&written.html).unwrap();
    assert!(
        html.contains(">blocked</span>"),
        "the blocked case reads blocked"
    );
    assert!(html.contains("1 blocked by an input guardrail, 19 sent to each version"));
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg") && html.contains("<style>"));
    assert!(html.contains("sim-small") && html.contains("Answer length"));
    for external in ["<script", "<link", "src=", "http://", "https://"] {
        assert!(
            !html.contains(external),
            "the report must stand alone: {external}"
        );
    }
}

#[tokio::test]
async fn no_guardrail_policy_applies_unless_chosen_and_the_summary_says_so() {
    let out = tempfile::tempdir().unwrap();
    let mut a = args(Path::new("sluice.toml"), out.path());
    a.suite = Some(PathBuf::from("evals/support-bot.jsonl"));
    a.versions = vec!["sim-small".into(), "chat-v2".into()];
    let written = eval::evaluate(&a, false).await.unwrap();
    let r = read_json(&written.json);
    // The shipped route `chat` names no guardrail policy, so none applies: every case is
    // sent, the card number included.
    assert!(r["guardrails"].is_null(), "{}", r["guardrails"]);
    assert_eq!(r["versions"][0]["requests"], 20);
    assert_eq!(r["versions"][0]["guardrails"]["blocked_input"], 0);
    let summary = eval::summary::table(&written.report);
    assert!(summary.contains("(20 requests)"), "{summary}");
    assert!(
        summary.contains(
            "guardrails: none: no --guardrails, and no route of the requests names a policy"
        ),
        "{summary}"
    );
}

#[tokio::test]
async fn a_suite_of_responses_requests_is_replayed_through_the_responses_api() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("responses.jsonl");
    let lines = [
        json!({"id": "plain", "model": "chat", "input": "How do I reset my password?", "expect": {"contains": ["the"]}}),
        json!({"id": "card", "model": "chat", "instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Charge my card 4111 1111 1111 1111"}]}]}),
        json!({"id": "json", "model": "chat", "input": "My plan as JSON, please.",
            "text": {"format": {"type": "json_object"}}, "expect": {"json_schema_valid": true}}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&suite, text.join("\n")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut a = args(Path::new("sluice.toml"), out.path());
    a.suite = Some(suite);
    a.versions = vec!["sim-small".into(), "sim-small".into()];
    a.guardrails = Some("default".into());
    let written = eval::evaluate(&a, false).await.unwrap();
    let r = read_json(&written.json);
    assert_eq!(r["source"]["cases"], 3);
    for v in r["versions"].as_array().unwrap() {
        // The card number in an input item is blocked as it would be in a message.
        assert_eq!(v["guardrails"]["blocked_input"], 1, "{v}");
        assert_eq!(v["requests"], 2);
        assert_eq!(v["answered"], 2, "{v}");
        // The mock's Responses answer: its usage (60 output tokens), read as a Response.
        assert_eq!(v["completion_tokens"]["mean"], 60.0);
        assert!(v["prompt_tokens"]["mean"].as_f64().unwrap() > 5.0);
        // `text.format` json_object is checked like `response_format`: words are no JSON.
        assert_eq!(
            (&v["schema"]["trials"], &v["schema"]["successes"]),
            (&json!(1), &json!(0))
        );
    }
    let plain = r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "plain")
        .unwrap();
    // A Response's status is its finish reason; the words of its output were read.
    assert_eq!(plain["answers"][0]["finish_reason"], "completed", "{plain}");
    assert!(
        plain["answers"][0]["chars"].as_u64().unwrap() > 100,
        "{plain}"
    );
    assert_eq!(
        plain["answers"][0]["expectations_failed"],
        json!([]),
        "{plain}"
    );
}

#[test]
fn the_command_names_an_unknown_version_and_a_line_that_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("bad.jsonl");
    std::fs::write(
        &suite,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n{oops\n",
    )
    .unwrap();
    let run = |versions: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["eval", "--suite"])
            .arg(&suite)
            .args(["--versions", versions, "--out"])
            .arg(dir.path().join("out"))
            .env_remove("SLUICE_ADMIN_TOKEN")
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap()
    };
    let unknown = run("sim-small,gpt-9");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success());
    assert!(
        stderr.contains("unknown version `gpt-9`") && stderr.contains("sim-large"),
        "{stderr}"
    );
    let bad_line = run("sim-small,sim-large");
    let stderr = String::from_utf8_lossy(&bad_line.stderr);
    assert!(!bad_line.status.success());
    assert!(stderr.contains("bad.jsonl, line 2: not JSON"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A config on a temporary SQLite file, with two mock versions (unused by pairs).
fn pairs_config(dir: &Path) -> PathBuf {
    let db = dir.join("eval.db");
    let text = format!(
        r#"
[database]
url = "sqlite://{}"
[providers.sim]
kind = "mock"
[versions.old]
provider = "sim"
model = "old-model"
[versions.new]
provider = "sim"
model = "new-model"
[routes.chat]
stable = "old"
"#,
        db.display()
    );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn insert_rollout(store: &Store, id: &str, route: &str) {
    let row = RolloutRow {
        id: id.into(),
        route: route.into(),
        stable_version: "old".into(),
        canary_version: "new".into(),
        policy: "default".into(),
        policy_json: "{}".into(),
        salt: "00".into(),
        position: Position {
            state: RolloutState::Progressing,
            step: 0,
            weight_bp: 100,
            step_started_ms: 1,
            inconclusive: false,
        },
        started_at_ms: 1,
        updated_at_ms: 1,
        ended_at_ms: None,
        judge_state: None,
        last_report: None,
        revision: 0,
        judge_cursor: None,
    };
    let event = NewEvent {
        actor: Actor::Operator,
        kind: "started",
        message: "test".into(),
        evidence: None,
    };
    store.insert_rollout(&row, &event).await.unwrap();
}

/// A pair: (answer, completion tokens, cost, latency, finish) for stable and for canary.
fn pair(
    n: usize,
    request: Value,
    stable: (&str, u64, f64, f64, &str),
    canary: (&str, u64, f64, f64, &str),
) -> ShadowPair {
    ShadowPair {
        id: 0,
        rollout_id: "r-1".into(),
        at_ms: n as i64,
        request_id: format!("req-{n}"),
        trace_id: None,
        workspace: "acme".into(),
        request,
        primary_version: "old".into(),
        primary_arm: Arm::Stable,
        primary_answer: stable.0.into(),
        primary_record: json!({"status": 200, "outcome": "ok", "latency_ms": stable.3,
            "usage": {"prompt_tokens": 10, "completion_tokens": stable.1, "estimated": false},
            "cost_usd": stable.2, "response_chars": stable.0.chars().count(), "finish_reason": stable.4}),
        shadow_version: "new".into(),
        shadow_answer: canary.0.into(),
        shadow_record: json!({"status": 200, "latency_ms": canary.3, "prompt_tokens": 10,
            "completion_tokens": canary.1, "cost_usd": canary.2, "finish_reason": canary.4, "tool_calls": []}),
    }
}

#[tokio::test]
async fn stored_shadow_pairs_give_hand_computed_figures() {
    let dir = tempfile::tempdir().unwrap();
    let config = pairs_config(dir.path());
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("eval.db").display()
    ))
    .await
    .unwrap();
    insert_rollout(&store, "r-1", "chat").await;
    insert_rollout(&store, "r-empty", "other").await;
    let ask = |q: &str| json!({"messages": [{"role": "user", "content": q}]});
    let json_ask = json!({"messages": [{"role": "user", "content": "as json"}],
        "response_format": {"type": "json_object"}});
    let long = "x".repeat(100);
    let pairs = [
        pair(
            1,
            ask("capital?"),
            ("Paris.", 20, 0.001, 100.0, "stop"),
            ("paris", 40, 0.004, 200.0, "stop"),
        ),
        pair(
            2,
            json_ask,
            (r#"{"a":1,"b":2}"#, 30, 0.002, 120.0, "stop"),
            (r#"{"b":2,"a":1}"#, 60, 0.006, 220.0, "stop"),
        ),
        pair(
            3,
            ask("explain"),
            ("short answer", 10, 0.001, 110.0, "stop"),
            (&long, 80, 0.008, 400.0, "length"),
        ),
        pair(
            4,
            ask("ok?"),
            ("no", 10, 0.001, 90.0, "stop"),
            ("yes", 20, 0.002, 180.0, "stop"),
        ),
    ];
    for p in &pairs {
        store.insert_shadow_pair(p, 100).await.unwrap();
    }
    store.close().await;

    let out = dir.path().join("out");
    let mut a = args(&config, &out);
    a.rollout = Some("r-1".into());
    let r = read_json(&eval::evaluate(&a, false).await.unwrap().json);

    assert_eq!(r["source"]["kind"], "rollout");
    assert_eq!(r["source"]["pairs"], 4);
    let (old, new) = (&r["versions"][0], &r["versions"][1]);
    assert_eq!(
        (old["name"].as_str(), new["name"].as_str()),
        (Some("old"), Some("new"))
    );
    // Pairs 1 (normalized text) and 2 (equal JSON) agree; 3 and 4 do not.
    assert_eq!(r["agreement"]["successes"], 2);
    assert_eq!(r["agreement"]["trials"], 4);
    // Wilson, 2 of 4: 0.5 ± 1.959964 · √(0.0625 + 0.060023) / 1.960365 = 0.5 ± 0.349962.
    assert!(close(&r["agreement"]["ci95"][0], 0.150038));
    assert!(close(&r["agreement"]["ci95"][1], 0.849962));
    // Tokens and cost per request.
    assert_eq!(old["prompt_tokens"]["mean"], 10.0);
    assert!(close(&old["completion_tokens"]["mean"], 17.5));
    assert!(close(&new["completion_tokens"]["mean"], 50.0));
    assert!(close(&old["cost_usd_total"], 0.005));
    assert!(close(&new["cost_usd_total"], 0.020));
    assert!(close(&new["cost_usd_per_request"]["mean"], 0.005));
    assert!(close(&new["latency_ms"]["p50"], 210.0));
    // Only pair 2 asked for JSON, and both answers are JSON objects.
    for v in [old, new] {
        assert_eq!(
            (
                v["schema"]["successes"].as_u64(),
                v["schema"]["trials"].as_u64()
            ),
            (Some(1), Some(1))
        );
    }
    // Lengths 6, 13, 12, 2 against 5, 13, 100, 3 in half-octave bins: A has 3, 6, 8, 8 and
    // B 5, 8, 14, 4. Shared bin 8 holds ½ of A, ¼ of B (M = ⅜):
    // ½·½·log2(4/3) + ½·¼·log2(2/3) = 0.103759 − 0.073120; each other bin holds ¼ of one
    // side alone and adds ½·¼·log2(2) = 0.125, five times: JSD = 0.655639.
    let d = &r["divergence"];
    assert!(close(&d["length"]["jsd"], 0.655639), "{}", d["length"]);
    assert_eq!(d["length"]["flagged"], true);
    // Finish reasons (length, stop): A = (0, 1), B = (¼, ¾), M = (⅛, ⅞):
    // ½·log2(8/7) + ½·(¼·log2 2 + ¾·log2(6/7)) = 0.096322 + 0.041603 = 0.137925.
    assert!(
        close(&d["finish_reason"]["jsd"], 0.137925),
        "{}",
        d["finish_reason"]
    );
    assert_eq!(d["finish_reason"]["categories"], json!(["length", "stop"]));
    // The primary's tool calls are not stored with a pair.
    assert!(d["tool_calls"]["jsd"].is_null());
    assert!(
        d["tool_calls"]["note"]
            .as_str()
            .unwrap()
            .contains("tool calls")
    );

    // A rollout without pairs and an unknown rollout are clear errors.
    a.rollout = Some("r-empty".into());
    let e = eval::evaluate(&a, false).await.err().unwrap().to_string();
    assert!(e.contains("rollout `r-empty` has no shadow pairs"), "{e}");
    a.rollout = Some("r-nope".into());
    let e = eval::evaluate(&a, false).await.err().unwrap().to_string();
    assert!(e.contains("no rollout `r-nope`"), "{e}");
}

/// Plays version A (`model-a`), version B (`model-b`) and the judge (`judge`). A case's
/// user message names its kind; the judge reads which shown answer says GOOD, except for
/// `case:positional`, where it always picks the first shown (pure position bias), and
/// `case:equal`, where it calls a tie.
async fn judge_upstream(judge_calls: Arc<Mutex<Vec<String>>>) -> String {
    async fn chat(
        State(calls): State<Arc<Mutex<Vec<String>>>>,
        body: axum::Json<Value>,
    ) -> axum::Json<Value> {
        let model = body["model"].as_str().unwrap_or_default();
        let user = body["messages"].as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let text = match model {
            "judge" => {
                calls.lock().unwrap().push(user.clone());
                let shown_first = between(&user, "[Answer A]", "[End of answer A]");
                let pick = if shown_first.contains("GOOD") {
                    "A"
                } else {
                    "B"
                };
                if user.contains("case:positional") {
                    "A".to_owned()
                } else if user.contains("case:equal") {
                    "Both are equally good.\nVERDICT: TIE".to_owned()
                } else if user.contains("case:verbose") {
                    format!("Weighing both answers carefully.\n\n**Verdict:** [[{pick}]]")
                } else {
                    format!("VERDICT: {pick}")
                }
            }
            _ => {
                let better = match model {
                    "model-a" => user.contains("case:a-better"),
                    _ => user.contains("case:b-better") || user.contains("case:verbose"),
                };
                if better {
                    format!("A GOOD answer from {model}.")
                } else {
                    format!("A plain answer from {model}.")
                }
            }
        };
        axum::Json(
            json!({"id": "x", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}),
        )
    }
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .with_state(judge_calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    #[expect(
        clippy::disallowed_methods,
        reason = "the mock judge upstream lives as long as the test"
    )]
    let _serving = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).map_or(0, |i| i + start.len());
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    &text[from..to]
}

#[tokio::test]
async fn the_judge_is_asked_in_both_orders_and_position_bias_cancels() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let url = judge_upstream(calls.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "sqlite://{}/unused.db"
[providers.local]
kind = "openai"
base_url = "{url}"
[versions.base]
provider = "local"
model = "model-a"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
[versions.cand]
provider = "local"
model = "model-b"
[versions.referee]
provider = "local"
model = "judge"
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
[routes.chat]
stable = "base"
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let kinds = [
        "b-better",
        "b-better",
        "b-better",
        "verbose",
        "a-better",
        "positional",
        "positional",
        "equal",
    ];
    let suite: String = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| {
            json!({"id": format!("c{i}"), "messages": [{"role": "user", "content": format!("case:{kind} question {i}")}]})
                .to_string()
                + "\n"
        })
        .collect();
    let suite_path = dir.path().join("judge.jsonl");
    std::fs::write(&suite_path, suite).unwrap();

    let mut a = args(&config, &dir.path().join("out"));
    a.suite = Some(suite_path);
    a.versions = vec!["base".into(), "cand".into()];
    a.judge = Some("referee".into());
    let written = eval::evaluate(&a, false).await.unwrap();
    let r = read_json(&written.json);
    let j = &r["judge"];

    // Every case judged twice: once A first, once B first.
    assert_eq!(calls.lock().unwrap().len(), 2 * kinds.len());
    assert_eq!(j["version"], "referee");
    assert_eq!(j["judged"], 8);
    // b-better ×3 and verbose: wins; a-better: a loss; positional ×2 (always "A") and
    // equal: ties.
    assert_eq!(
        (j["wins"].as_u64(), j["ties"].as_u64(), j["losses"].as_u64()),
        (Some(4), Some(3), Some(1))
    );
    assert_eq!(j["invalid"], 0);
    // 4 wins of 5 decisive cases; Wilson 95 %: [0.3755, 0.9638].
    assert!(close(&j["win_rate"]["rate"], 0.8));
    assert!((j["win_rate"]["ci95"][0].as_f64().unwrap() - 0.3755).abs() < 1e-3);
    assert!((j["win_rate"]["ci95"][1].as_f64().unwrap() - 0.9638).abs() < 1e-3);
    assert!(close(&j["win_rate_ties_split"], 5.5 / 8.0));
    // Both orders named the same version (or both a tie) in 6 of 8 cases.
    assert!(close(&j["order_consistency"], 0.75));
    // First-position picks: positional 4, b-better/verbose 4 (B shown first), a-better 1; of 14.
    assert!(close(&j["first_position_share"], 9.0 / 14.0));
    // 16 judge calls of 100 + 10 tokens at $1 per million.
    assert_eq!(j["tokens"], 16 * 110);
    assert!(close(&j["cost_usd"], 16.0 * 110.0 / 1e6));
    let case0 = &r["cases"][0]["judge"];
    assert_eq!(case0["verdicts"], json!(["second", "first"]));
    assert_eq!(case0["outcome"], "win");
    let positional = &r["cases"][5]["judge"];
    assert_eq!(positional["verdicts"], json!(["first", "first"]));
    assert_eq!(positional["outcome"], "tie");
    // No guardrail policy exists beside this config.
    assert!(r["guardrails"].is_null());
    let html = std::fs::read_to_string(&written.html).unwrap();
    assert!(html.contains("Judge: referee") && html.contains("B wins 4"));
}
