//! Configuration: `sluice.toml` read into typed structs, then checked as a whole.
//!
//! Loading never stops at the first mistake: unknown keys and semantic errors (a route that
//! names a missing version, a provider without its key, a bad URL) are all collected and
//! reported together, one line each, naming the file and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::rollout::policy::{self, Policy};
use crate::secret::Secret;
use std::sync::Arc;

/// Environment variable that overrides `[database] url`.
pub const DATABASE_URL_ENV: &str = "SLUICE_DATABASE_URL";

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub versions: BTreeMap<String, VersionConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
    #[serde(default)]
    pub policies: PoliciesConfig,
    /// Default limits for workspaces without their own.
    #[serde(default)]
    pub limits: crate::limits::Limits,
    /// OpenTelemetry export.
    #[serde(default)]
    pub telemetry: crate::traces::TelemetryConfig,
    /// Several replicas on one PostgreSQL.
    #[serde(default)]
    pub cluster: crate::cluster::config::ClusterConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PoliciesConfig {
    /// Rollout policies (`*.toml`), relative to the config file.
    #[serde(default = "default_policies_dir")]
    pub dir: String,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        Self {
            dir: default_policies_dir(),
        }
    }
}

fn default_policies_dir() -> String {
    "policies".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How long in-flight requests may run on after SIGTERM before they are cut.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Measurement records buffered between the request path and the database writer.
    #[serde(default = "default_record_queue")]
    pub record_queue: usize,
    /// Shadow copies waiting to be sent; when full, a copy is dropped and counted.
    #[serde(default = "default_shadow_queue")]
    pub shadow_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            record_queue: default_record_queue(),
            shadow_queue: default_shadow_queue(),
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

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseConfig {
    #[serde(default = "default_database_url")]
    pub url: String,
    /// How long stored rows are kept, e.g. "30d"; absent: keep everything.
    #[serde(default)]
    pub retention: Option<String>,
    /// Per table, overriding `retention` (see `cluster::config::RetentionConfig`).
    #[serde(default)]
    pub retention_per_table: BTreeMap<String, String>,
}

impl DatabaseConfig {
    pub fn retention_config(&self) -> crate::cluster::config::RetentionConfig {
        crate::cluster::config::RetentionConfig {
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
pub struct AdminConfig {
    #[serde(default = "default_admin_token_env")]
    pub token_env: String,
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
pub enum ProviderKind {
    /// Any server that speaks OpenAI's chat-completions API.
    Openai,
    /// Built in: synthetic answers shaped by the version's `mock` table, no network.
    Mock,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    120_000
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Shape of a built-in mock model's answers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MockConfig {
    #[serde(default = "default_mock_ttft_ms")]
    pub ttft_ms: u64,
    #[serde(default = "default_mock_tokens_per_s")]
    pub tokens_per_s: f64,
    #[serde(default = "default_mock_output_tokens")]
    pub output_tokens: u32,
    #[serde(default)]
    pub error_rate: f64,
    /// Spread of answer length and time to first token: each request draws a factor
    /// uniformly from [1 − jitter, 1 + jitter]. 0 makes every answer the same.
    #[serde(default)]
    pub jitter: f64,
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
pub struct VersionConfig {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub price: Price,
    pub mock: Option<MockConfig>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RouteConfig {
    pub stable: String,
    /// A guardrail policy in `policies/guardrails/` (file stem).
    pub guardrails: Option<String>,
    #[serde(default)]
    pub on_schema_failure: OnSchemaFailure,
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

/// One mistake in a config file, located by the file and the dotted key.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every mistake found in one load, in file order where there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the configuration has {} mistake(s):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A config that passed every check, with the secrets it needs read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub file: PathBuf,
    pub config: Config,
    pub listen: SocketAddr,
    pub database_url: String,
    pub admin_token: Secret,
    /// Provider name → its API key, for `openai` providers whose `api_key_env` is set.
    pub provider_keys: BTreeMap<String, Secret>,
    /// Rollout policies by name, read from `[policies] dir` at start.
    pub policies: BTreeMap<String, Arc<Policy>>,
    /// That folder: a rollout reads its policy file again when it starts.
    pub policies_dir: PathBuf,
    /// Guardrail policies by name, from `guardrails/` in that folder.
    pub guardrails: BTreeMap<String, Arc<crate::guardrails::GuardrailSet>>,
}

/// Reads `path` and checks it, taking environment variables from the process.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigIssue {
            file: path.to_owned(),
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Parses and checks a config text; `env` answers environment look-ups (tests pass a map).
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigErrors> {
    let issue = |key: &str, message: String| ConfigIssue {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    };
    let mut issues = Vec::new();
    let mut unknown = Vec::new();
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| ConfigErrors(vec![issue("", e.to_string())]))?;
    let config: Config =
        match serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string())) {
            Ok(config) => config,
            Err(e) => {
                let e: toml::de::Error = e;
                return Err(ConfigErrors(vec![issue(
                    "",
                    e.to_string().trim_end().to_owned(),
                )]));
            }
        };
    for key in unknown {
        issues.push(issue(&key, "unknown key".into()));
    }

    let listen = match config.server.listen.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            issues.push(issue(
                "server.listen",
                format!(
                    "`{}` is not an address such as 127.0.0.1:8080",
                    config.server.listen
                ),
            ));
            None
        }
    };
    if config.server.max_body_bytes == 0 {
        issues.push(issue(
            "server.max_body_bytes",
            "must be greater than 0".into(),
        ));
    }
    if config.server.record_queue == 0 {
        issues.push(issue(
            "server.record_queue",
            "must be greater than 0".into(),
        ));
    }

    for (key, message) in config
        .cluster
        .check()
        .into_iter()
        .chain(config.database.retention_config().check())
    {
        issues.push(issue(&key, message));
    }

    let database_url = env(DATABASE_URL_ENV).unwrap_or_else(|| config.database.url.clone());
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        issues.push(issue(
            "database.url",
            format!("`{database_url}` is neither sqlite:… nor postgres://…"),
        ));
    }

    let admin_token = match env(&config.admin.token_env) {
        Some(token) if !token.is_empty() => Some(Secret::new(token)),
        _ => {
            issues.push(issue(
                "admin.token_env",
                format!(
                    "environment variable {} is not set; the admin API needs a token",
                    config.admin.token_env
                ),
            ));
            None
        }
    };

    for (name, provider) in &config.providers {
        let key = format!("providers.{name}");
        match provider.kind {
            ProviderKind::Openai => match &provider.base_url {
                None => issues.push(issue(
                    &format!("{key}.base_url"),
                    "is required for kind = \"openai\"".into(),
                )),
                Some(raw) => match url::Url::parse(raw) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
                    Ok(_) => issues.push(issue(
                        &format!("{key}.base_url"),
                        format!("`{raw}` is not an http(s) URL"),
                    )),
                    Err(e) => issues.push(issue(
                        &format!("{key}.base_url"),
                        format!("`{raw}` is not a URL: {e}"),
                    )),
                },
            },
            ProviderKind::Mock => {
                if provider.base_url.is_some() {
                    issues.push(issue(
                        &format!("{key}.base_url"),
                        "a mock provider has no base_url".into(),
                    ));
                }
            }
        }
        if provider.timeout_ms == 0 {
            issues.push(issue(
                &format!("{key}.timeout_ms"),
                "must be greater than 0".into(),
            ));
        }
    }

    for (name, version) in &config.versions {
        let key = format!("versions.{name}");
        match config.providers.get(&version.provider) {
            None => issues.push(issue(
                &format!("{key}.provider"),
                format!("unknown provider `{}`", version.provider),
            )),
            Some(p) if p.kind == ProviderKind::Openai && version.mock.is_some() => {
                issues.push(issue(
                    &format!("{key}.mock"),
                    "only versions on a mock provider take a mock table".into(),
                ))
            }
            Some(_) => {}
        }
        if version.model.trim().is_empty() {
            issues.push(issue(&format!("{key}.model"), "must not be empty".into()));
        }
        let price = version.price;
        if [price.input_per_mtok, price.output_per_mtok]
            .iter()
            .any(|p| p.is_nan() || *p < 0.0)
        {
            issues.push(issue(
                &format!("{key}.price"),
                "prices must be zero or more".into(),
            ));
        }
        if let Some(mock) = &version.mock {
            if !(0.0..=1.0).contains(&mock.error_rate) {
                issues.push(issue(
                    &format!("{key}.mock.error_rate"),
                    "must be between 0 and 1".into(),
                ));
            }
            if !(0.0..1.0).contains(&mock.jitter) {
                issues.push(issue(
                    &format!("{key}.mock.jitter"),
                    "must be at least 0 and below 1".into(),
                ));
            }
            if mock.tokens_per_s.is_nan() || mock.tokens_per_s <= 0.0 {
                issues.push(issue(
                    &format!("{key}.mock.tokens_per_s"),
                    "must be greater than 0".into(),
                ));
            }
        }
    }

    let mut provider_keys = BTreeMap::new();
    let mut used_providers = std::collections::BTreeSet::new();
    for (name, route) in &config.routes {
        if let Err(why) = crate::resolve::RouteName::parse(name) {
            issues.push(issue(&format!("routes.{name}"), why));
        }
        match config.versions.get(&route.stable) {
            None => issues.push(issue(
                &format!("routes.{name}.stable"),
                format!("unknown version `{}`", route.stable),
            )),
            Some(v) => {
                used_providers.insert(v.provider.clone());
            }
        }
    }
    for (name, provider) in &config.providers {
        let (ProviderKind::Openai, Some(var)) = (provider.kind, &provider.api_key_env) else {
            continue;
        };
        match env(var) {
            Some(value) if !value.is_empty() => {
                provider_keys.insert(name.clone(), Secret::new(value));
            }
            // A provider only canary versions use may lack its key: a rollout to it is refused.
            _ if used_providers.contains(name) => issues.push(issue(
                &format!("providers.{name}.api_key_env"),
                format!("environment variable {var} is not set, and a route uses this provider"),
            )),
            _ => {}
        }
    }

    // Policies live beside the config file; the default folder may be absent.
    let policies_dir = file
        .parent()
        .unwrap_or(Path::new(""))
        .join(&config.policies.dir);
    let mut policies = BTreeMap::new();
    if policies_dir.is_dir() {
        match policy::load_dir(&policies_dir) {
            Ok(loaded) => policies = loaded.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            Err(errors) => issues.extend(errors.0),
        }
    } else if config.policies.dir != default_policies_dir() {
        issues.push(issue(
            "policies.dir",
            format!("`{}` is not a folder", policies_dir.display()),
        ));
    }

    let guardrails = match crate::guardrails::load_dir(&policies_dir.join("guardrails")) {
        Ok(sets) => sets,
        Err(errors) => {
            issues.extend(errors.0);
            BTreeMap::new()
        }
    };
    for (name, route) in &config.routes {
        if let Some(g) = &route.guardrails
            && !guardrails.contains_key(g)
        {
            issues.push(issue(
                &format!("routes.{name}.guardrails"),
                format!(
                    "no guardrail policy `{g}` in {}",
                    policies_dir.join("guardrails").display()
                ),
            ));
        }
    }

    if let Some(endpoint) = &config.telemetry.otlp_endpoint
        && url::Url::parse(endpoint).is_err()
    {
        issues.push(issue(
            "telemetry.otlp_endpoint",
            format!("`{endpoint}` is not a URL"),
        ));
    }
    if !(0.0..=1.0).contains(&config.telemetry.sample_ratio) {
        issues.push(issue(
            "telemetry.sample_ratio",
            "must be between 0 and 1".into(),
        ));
    }
    if let Err(why) = config.limits.check() {
        issues.push(issue("limits", why));
    }

    if !issues.is_empty() {
        return Err(ConfigErrors(issues));
    }
    Ok(Settings {
        file: file.to_owned(),
        config,
        listen: listen.expect("checked above"),
        database_url,
        admin_token: admin_token.expect("checked above"),
        provider_keys,
        policies,
        policies_dir,
        guardrails,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    const ISSUE_EXAMPLE: &str = include_str!("../examples/openai.toml");

    #[test]
    fn the_issue_example_loads_when_its_keys_are_set() {
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t"), ("OPENAI_API_KEY", "sk-x")]);
        let settings = parse(Path::new("sluice.toml"), ISSUE_EXAMPLE, &env).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.config.server.max_body_bytes, 4_194_304);
        assert_eq!(settings.config.routes["chat"].stable, "gpt-4o");
        assert_eq!(
            settings.config.versions["sim-small"]
                .mock
                .as_ref()
                .unwrap()
                .output_tokens,
            60
        );
        assert_eq!(settings.provider_keys["openai"].expose(), "sk-x");
    }

    #[test]
    fn the_database_url_can_be_overridden_from_the_environment() {
        let env = env_with(&[
            ("SLUICE_ADMIN_TOKEN", "t"),
            ("OPENAI_API_KEY", "sk-x"),
            ("SLUICE_DATABASE_URL", "postgres://db/x"),
        ]);
        let settings = parse(Path::new("sluice.toml"), ISSUE_EXAMPLE, &env).unwrap();
        assert_eq!(settings.database_url, "postgres://db/x");
    }

    #[test]
    fn every_mistake_is_reported_with_file_and_key() {
        let text = r#"
[server]
listen = "127.0.0.1:8080"
colour = "blue"

[providers.openai]
kind = "openai"
base_url = "not a url"
api_key_env = "NOPE_KEY"

[versions.a]
provider = "openai"
model = "gpt-4o"

[versions.b]
provider = "nowhere"
model = "x"

[routes.chat]
stable = "a"

[routes.other]
stable = "missing"
"#;
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t")]);
        let errors = parse(Path::new("conf/bad.toml"), text, &env).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|i| i.to_string()).collect();
        let expect = [
            "conf/bad.toml: server.colour: unknown key",
            "conf/bad.toml: providers.openai.base_url: `not a url` is not a URL",
            "conf/bad.toml: versions.b.provider: unknown provider `nowhere`",
            "conf/bad.toml: routes.other.stable: unknown version `missing`",
            "conf/bad.toml: providers.openai.api_key_env: environment variable NOPE_KEY is not set",
        ];
        for want in expect {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "missing `{want}` in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
    }

    #[test]
    fn a_missing_key_for_an_unused_provider_is_not_an_error() {
        let text = r#"
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "UNSET_KEY"
[providers.sim]
kind = "mock"
[versions.small]
provider = "sim"
model = "sim-small"
[routes.demo]
stable = "small"
"#;
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t")]);
        assert!(parse(Path::new("s.toml"), text, &env).is_ok());
    }

    #[test]
    fn a_missing_admin_token_is_refused() {
        let errors = parse(Path::new("s.toml"), "", &env_with(&[])).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].key, "admin.token_env");
    }

    #[test]
    fn a_type_error_names_the_key() {
        let errors = parse(
            Path::new("s.toml"),
            "[server]\nmax_body_bytes = \"big\"\n",
            &env_with(&[("SLUICE_ADMIN_TOKEN", "t")]),
        )
        .unwrap_err();
        let text = errors.to_string();
        assert!(text.contains("max_body_bytes"), "{text}");
    }

    #[test]
    fn cost_is_priced_per_million_tokens() {
        let price = Price {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
        };
        assert!((price.cost_usd(1_000_000, 0) - 2.5).abs() < 1e-12);
        assert!((price.cost_usd(1000, 500) - (0.0025 + 0.005)).abs() < 1e-12);
    }
}
