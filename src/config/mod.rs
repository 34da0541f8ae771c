//! Configuration: `sluice.toml` as plain serde data, importing nothing but `types`.
//!
//! Reading and checking it is `settings`' job: it never stops at the first mistake; unknown
//! keys and semantic errors (a route that names a missing version, a provider without its
//! key, a bad URL) are all collected and reported together, one line each, naming the file
//! and the key ([`issue::ConfigIssue`]).

use std::collections::BTreeMap;

use serde::Deserialize;

pub mod cluster;
pub mod issue;

use crate::types::Price;

/// Environment variable that overrides `[database] url`.
pub(crate) const DATABASE_URL_ENV: &str = "SLUICE_DATABASE_URL";

#[derive(Debug, Clone, Deserialize)]
/// `sluice.toml` as read, one field per table; unchecked (see `settings` for the checks).
pub struct Config {
    #[serde(default)]
    pub(crate) server: ServerConfig,
    #[serde(default)]
    /// `[database]`: where the store lives and how long rows are kept.
    pub database: DatabaseConfig,
    #[serde(default)]
    pub(crate) admin: AdminConfig,
    #[serde(default)]
    /// `[providers.NAME]`: the upstreams versions are served by, by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    /// `[versions.NAME]`: the model versions routes and rollouts name, by name.
    pub versions: BTreeMap<String, VersionConfig>,
    #[serde(default)]
    /// `[routes.NAME]`: what clients put in `model`, by name, each with its stable version.
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub(crate) policies: PoliciesConfig,
    /// Default limits for workspaces without their own.
    #[serde(default)]
    pub(crate) limits: crate::types::Limits,
    /// OpenTelemetry export.
    #[serde(default)]
    pub(crate) telemetry: TelemetryConfig,
    /// Several replicas on one PostgreSQL (ignored on SQLite).
    #[serde(default)]
    pub(crate) cluster: cluster::ClusterConfig,
    /// Model-less `/v1` endpoints (files, batches, …): off unless a provider is named.
    #[serde(default)]
    pub(crate) passthrough: PassthroughConfig,
}

/// `[passthrough]`: where `/v1` endpoints without a `model` go.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct PassthroughConfig {
    /// The provider that serves `/v1/files`, `/v1/batches`, `/v1/uploads`,
    /// `/v1/vector_stores`, … with its own key. Unset: those paths answer 404.
    pub(crate) provider: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PoliciesConfig {
    /// Rollout policies (`*.toml`), relative to the config file.
    #[serde(default = "default_policies_dir")]
    pub(crate) dir: String,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: default_policies_dir(),
        }
    }
}

pub(crate) fn default_policies_dir() -> String {
    "policies".into()
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServerConfig {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM before they are cut.
    #[serde(default = "default_shutdown_grace_ms")]
    pub(crate) shutdown_grace_ms: u64,
    /// Measurement records buffered between the request path and the database writer.
    #[serde(default = "default_record_queue")]
    pub(crate) record_queue: usize,
    /// Shadow copies waiting to be sent; when full, a copy is dropped and counted.
    #[serde(default = "default_shadow_queue")]
    pub(crate) shadow_queue: usize,
    /// Failed authentications one client address may make at once before it is locked out.
    #[serde(default = "default_auth_failure_burst")]
    pub(crate) auth_failure_burst: u32,
    /// How fast that allowance refills, per minute.
    #[serde(default = "default_auth_failures_per_minute")]
    pub(crate) auth_failures_per_minute: u32,
    /// Admin calls one client address may make at once…
    #[serde(default = "default_admin_burst")]
    pub(crate) admin_burst: u32,
    /// …and per second after that.
    #[serde(default = "default_admin_requests_per_second")]
    pub(crate) admin_requests_per_second: u32,
    /// A connection must send a whole request head within this long, or it is closed.
    #[serde(default = "default_header_read_timeout_ms")]
    pub(crate) header_read_timeout_ms: u64,
    /// A request's whole body must arrive within this long after its head, or it is answered
    /// 408 (a client that trickles its body holds no request for ever). The default, 60 s,
    /// asks about 70 KB/s of a body at the default `max_body_bytes` (4 MiB).
    #[serde(default = "default_body_read_timeout_ms")]
    pub(crate) body_read_timeout_ms: u64,
    /// Largest request head (request line and headers) in bytes; larger is 431. At least 8192.
    #[serde(default = "default_max_header_bytes")]
    pub(crate) max_header_bytes: usize,
    /// Open client connections at most; more wait unaccepted until one closes.
    #[serde(default = "default_max_connections")]
    pub(crate) max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub(crate) http2_max_concurrent_streams: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            record_queue: default_record_queue(),
            shadow_queue: default_shadow_queue(),
            auth_failure_burst: default_auth_failure_burst(),
            auth_failures_per_minute: default_auth_failures_per_minute(),
            admin_burst: default_admin_burst(),
            admin_requests_per_second: default_admin_requests_per_second(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_shutdown_grace_ms() -> u64 {
    30_000
}
fn default_record_queue() -> usize {
    16_384
}
fn default_shadow_queue() -> usize {
    1_024
}
fn default_auth_failure_burst() -> u32 {
    20
}
fn default_auth_failures_per_minute() -> u32 {
    30
}
fn default_admin_burst() -> u32 {
    100
}
fn default_admin_requests_per_second() -> u32 {
    20
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_body_read_timeout_ms() -> u64 {
    60_000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    10_000
}
fn default_http2_max_concurrent_streams() -> u32 {
    256
}

#[derive(Debug, Clone, Deserialize)]
/// `[database]` in sluice.toml: the URL (`sqlite://…` or `postgres://…`) and retention.
pub struct DatabaseConfig {
    #[serde(default = "default_database_url")]
    pub(crate) url: String,
    /// How long stored rows are kept, e.g. "30d"; absent: keep everything.
    #[serde(default)]
    pub(crate) retention: Option<String>,
    /// Per table, overriding `retention` (see [`cluster::PrunedTable`] for the names).
    #[serde(default)]
    pub(crate) retention_per_table: BTreeMap<String, String>,
}

impl DatabaseConfig {
    /// The retention settings on their own.
    pub fn retention_config(&self) -> cluster::RetentionConfig {
        cluster::RetentionConfig {
            retention: self.retention.clone(),
            retention_per_table: self.retention_per_table.clone(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            retention: None,
            retention_per_table: BTreeMap::new(),
        }
    }
}

fn default_database_url() -> String {
    "sqlite://sluice.db".into()
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct AdminConfig {
    #[serde(default = "default_admin_token_env")]
    pub(crate) token_env: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token_env: default_admin_token_env(),
        }
    }
}

fn default_admin_token_env() -> String {
    "SLUICE_ADMIN_TOKEN".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProviderKind {
    /// Any server that speaks OpenAI's chat-completions API.
    Openai,
    /// Built in: synthetic answers shaped by the version's `mock` table, no network.
    Mock,
    /// Azure OpenAI: `endpoint`, `api_version`, a `deployment` per version, the key in the
    /// `api-key` header (or an Entra ID bearer token from `bearer_token_env`).
    Azure,
}

#[derive(Debug, Clone, Deserialize)]
/// `[providers.NAME]` in sluice.toml: an upstream's kind, address, key and timeout.
pub struct ProviderConfig {
    pub(crate) kind: ProviderKind,
    pub(crate) base_url: Option<String>,
    pub(crate) api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub(crate) timeout_ms: u64,
    /// Azure: the resource URL, e.g. `https://my-resource.openai.azure.com`.
    pub(crate) endpoint: Option<String>,
    /// Azure: the `api-version` query value (e.g. `2024-10-21`), or `v1` for the GA v1 API.
    pub(crate) api_version: Option<String>,
    /// Azure: an environment variable holding a Microsoft Entra ID token, sent as
    /// `Authorization: Bearer …` instead of the `api-key` header.
    pub(crate) bearer_token_env: Option<String>,
    /// Client headers passed upstream besides `OpenAI-Beta` and the trace context.
    #[serde(default)]
    pub(crate) forward_headers: Vec<String>,
    /// Static headers added to every call to this provider.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    /// Sent as `OpenAI-Organization`.
    pub(crate) organization: Option<String>,
    /// Sent as `OpenAI-Project`.
    pub(crate) project: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (a private CA),
    /// relative to the config file.
    pub(crate) ca_file: Option<std::path::PathBuf>,
    /// An egress proxy (`http://host:port`) for this provider. Unset: `HTTPS_PROXY`,
    /// `HTTP_PROXY` and `NO_PROXY` from the environment apply.
    pub(crate) proxy: Option<String>,
    /// Whether sluice adds `stream_options.include_usage` to streamed requests (to measure
    /// tokens from the upstream's own count) or never touches the field.
    #[serde(default)]
    pub(crate) stream_usage: StreamUsage,
}

/// `stream_usage` of a provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StreamUsage {
    /// Ask for the usage chunk (and remove it again when the client did not ask); if the
    /// upstream refuses the field with a 400, retry once without it and stop asking.
    #[default]
    Ask,
    /// Never add the field: tokens of streams are counted with tiktoken, marked estimated.
    Never,
}

fn default_timeout_ms() -> u64 {
    120_000
}

/// Shape of a built-in mock model's answers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct MockConfig {
    #[serde(default = "default_mock_ttft_ms")]
    pub(crate) ttft_ms: u64,
    #[serde(default = "default_mock_tokens_per_s")]
    pub(crate) tokens_per_s: f64,
    #[serde(default = "default_mock_output_tokens")]
    pub(crate) output_tokens: u32,
    #[serde(default)]
    pub(crate) error_rate: f64,
    /// Spread of answer length and time to first token: each request draws a factor
    /// uniformly from [1 − jitter, 1 + jitter]. 0 makes every answer the same.
    #[serde(default)]
    pub(crate) jitter: f64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            ttft_ms: default_mock_ttft_ms(),
            tokens_per_s: default_mock_tokens_per_s(),
            output_tokens: default_mock_output_tokens(),
            error_rate: 0.0,
            jitter: 0.0,
        }
    }
}

fn default_mock_ttft_ms() -> u64 {
    40
}
fn default_mock_tokens_per_s() -> f64 {
    200.0
}
fn default_mock_output_tokens() -> u32 {
    60
}

#[derive(Debug, Clone, Deserialize)]
/// `[versions.NAME]` in sluice.toml: a model at a provider, with its price per million tokens.
pub struct VersionConfig {
    pub(crate) provider: String,
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) price: Price,
    pub(crate) mock: Option<MockConfig>,
    /// Azure: the deployment that serves this version (its name in the URL and `model`).
    pub(crate) deployment: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
/// `[routes.NAME]` in sluice.toml: the stable version clients get, its guardrails and what a
/// schema failure becomes.
pub struct RouteConfig {
    pub(crate) stable: String,
    /// A guardrail policy in `policies/guardrails/` (file stem).
    pub(crate) guardrails: Option<String>,
    #[serde(default)]
    pub(crate) on_schema_failure: OnSchemaFailure,
}

/// What an answer that does not fit its requested schema becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSchemaFailure {
    /// Counted and marked (`x-sluice-schema: fail`), passed through unchanged.
    #[default]
    Pass,
    /// A 502 naming the path that failed (a stream ends with an error event).
    Error,
}

/// `[telemetry]` in sluice.toml.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint, e.g. `http://127.0.0.1:4318/v1/traces`. None: no tracing.
    pub(crate) otlp_endpoint: Option<String>,
    /// Extra headers for the exporter (an API key of the tracing backend).
    #[serde(default)]
    pub(crate) otlp_headers: std::collections::HashMap<String, String>,
    /// Share of traces kept (root requests; a sampled parent is always followed).
    #[serde(default = "default_sample_ratio")]
    pub(crate) sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    1.0
}
