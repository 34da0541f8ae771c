//! Settings: `sluice.toml` checked, with everything it names loaded beside it — the
//! secrets from the environment, the rollout policies (`rollout::policy_file`) and the
//! guardrail sets (`guardrails::load_dir`). Every mistake of all three loaders is gathered
//! into one [`ConfigErrors`], which is what `sluice config check` prints.
//!
//! `config` is the plain data; this module sits above it and above the loaders.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::issue::{ConfigErrors, ConfigIssue, read_toml, struct_fields};
use crate::config::*;
use crate::rollout::policy::{self, Policy};
use crate::types::Secret;

/// A config that passed every check, with the secrets it needs read from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file these settings were read from.
    pub file: PathBuf,
    /// The config as read.
    pub config: Config,
    /// The address to listen on (`[server] listen`).
    pub listen: SocketAddr,
    /// The database URL: `SLUICE_DATABASE_URL` if set, else `[database] url`.
    pub database_url: String,
    pub(crate) admin_token: Secret,
    /// Provider name → its API key, for `openai` providers whose `api_key_env` is set.
    pub(crate) provider_keys: BTreeMap<String, Secret>,
    /// Rollout policies by name, read from `[policies] dir` at start.
    pub(crate) policies: BTreeMap<String, Arc<Policy>>,
    /// That folder: a rollout reads its policy file again when it starts.
    pub(crate) policies_dir: PathBuf,
    /// Guardrail policies by name, from `guardrails/` in that folder.
    pub(crate) guardrails: BTreeMap<String, Arc<crate::guardrails::GuardrailSet>>,
}

/// Reads `path` and checks it, taking environment variables from the process.
///
/// # Errors
/// The file cannot be read, or every mistake in it at once ([`ConfigErrors`]).
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

/// Turns `host:port` into the address to bind: an IP address as written, or a host name
/// (`localhost:8093`) resolved once, taking its first address.
///
/// Errors (the message names the text) when there is no port or the name does not resolve.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = "an address such as 127.0.0.1:8080 or localhost:8080";
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{text}` resolves to no address; give {hint}")),
        Err(e) => Err(format!("`{text}` is not {hint} ({e})")),
    }
}

/// The known keys of each table of `sluice.toml`, for "did you mean" (see [`read_toml`]).
fn config_fields(parent: &[&str]) -> Option<&'static [&'static str]> {
    Some(match parent {
        [] => struct_fields::<Config>(),
        ["server"] => struct_fields::<ServerConfig>(),
        ["database"] => struct_fields::<DatabaseConfig>(),
        ["admin"] => struct_fields::<AdminConfig>(),
        ["policies"] => struct_fields::<PoliciesConfig>(),
        ["telemetry"] => struct_fields::<TelemetryConfig>(),
        ["limits"] => struct_fields::<crate::types::Limits>(),
        ["providers", _] => struct_fields::<ProviderConfig>(),
        ["versions", _] => struct_fields::<VersionConfig>(),
        ["versions", _, "mock"] => struct_fields::<MockConfig>(),
        ["versions", _, "price"] => struct_fields::<crate::types::Price>(),
        ["routes", _] => struct_fields::<RouteConfig>(),
        _ => return None,
    })
}

/// Parses and checks a config text; `env` answers environment look-ups (tests pass a map).
///
/// # Errors
/// Every mistake at once ([`ConfigErrors`]): unknown keys, unparsable values, names that
/// refer to nothing, missing secrets, policy and guardrail files that do not load.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigErrors> {
    let (config, found) = read_toml::<Config>(file, text, &config_fields);
    let mut issues = Issues { file, found };
    let Some(config) = config else {
        return Err(ConfigErrors(issues.found));
    };
    let listen = check_server(&mut issues, &config.server);
    issues.extend(check_cluster(&config));
    let database_url = database_url(&mut issues, &config, env);
    let admin_token = admin_token(&mut issues, &config.admin, env);
    check_providers(&mut issues, &config.providers);
    check_versions(&mut issues, &config);
    let used = used_providers(&mut issues, &config);
    let provider_keys = provider_keys(&mut issues, &config.providers, &used, env);
    // Policies live beside the config file; the default folder may be absent.
    let policies_dir = file
        .parent()
        .unwrap_or(Path::new(""))
        .join(&config.policies.dir);
    let policies = load_policies(&mut issues, &config.policies, &policies_dir);
    let guardrails = load_guardrails(&mut issues, &config.routes, &policies_dir);
    check_telemetry_and_limits(&mut issues, &config);
    if !issues.found.is_empty() {
        return Err(ConfigErrors(issues.found));
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

/// The mistakes found in a config so far, in the order `sluice config check` prints them.
struct Issues<'a> {
    file: &'a Path,
    found: Vec<ConfigIssue>,
}

impl Issues<'_> {
    fn push(&mut self, key: &str, message: String) {
        self.found.push(ConfigIssue {
            file: self.file.to_owned(),
            key: key.to_owned(),
            message,
        });
    }

    /// Mistakes a checker returned as (dotted key, message).
    fn extend(&mut self, pairs: Vec<(String, String)>) {
        for (key, message) in pairs {
            self.push(&key, message);
        }
    }
}

/// `[server]`: the listen address (resolved here) and limits that must not be 0.
fn check_server(issues: &mut Issues, server: &ServerConfig) -> Option<SocketAddr> {
    let listen = match listen_address(&server.listen) {
        Ok(addr) => Some(addr),
        Err(message) => {
            issues.push("server.listen", message);
            None
        }
    };
    if server.max_body_bytes == 0 {
        issues.push("server.max_body_bytes", "must be greater than 0".into());
    }
    if server.max_header_bytes < 8192 {
        issues.push(
            "server.max_header_bytes",
            "must be at least 8192 (the HTTP server's floor)".into(),
        );
    }
    for (key, value) in [
        (
            "server.header_read_timeout_ms",
            server.header_read_timeout_ms,
        ),
        ("server.body_read_timeout_ms", server.body_read_timeout_ms),
        ("server.max_connections", server.max_connections as u64),
        (
            "server.http2_max_concurrent_streams",
            u64::from(server.http2_max_concurrent_streams),
        ),
    ] {
        if value == 0 {
            issues.push(key, "must be greater than 0".into());
        }
    }
    if server.record_queue == 0 {
        issues.push("server.record_queue", "must be greater than 0".into());
    }
    listen
}

/// The database URL: the environment's [`DATABASE_URL_ENV`] over `[database] url`.
fn database_url(
    issues: &mut Issues,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> String {
    let database_url = env(DATABASE_URL_ENV).unwrap_or_else(|| config.database.url.clone());
    if !(database_url.starts_with("sqlite:")
        || database_url.starts_with("postgres://")
        || database_url.starts_with("postgresql://"))
    {
        issues.push(
            "database.url",
            format!("`{database_url}` is neither sqlite:… nor postgres://…"),
        );
    }
    database_url
}

fn admin_token(
    issues: &mut Issues,
    admin: &AdminConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Secret> {
    match env(&admin.token_env) {
        Some(token) if !token.is_empty() => Some(Secret::new(token)),
        _ => {
            issues.push(
                "admin.token_env",
                format!(
                    "environment variable {} is not set; the admin API needs a token",
                    admin.token_env
                ),
            );
            None
        }
    }
}

/// Each `[providers.<name>]`: its URL or endpoint by kind, its HTTP options, its timeout.
fn check_providers(issues: &mut Issues, providers: &BTreeMap<String, ProviderConfig>) {
    for (name, provider) in providers {
        let key = format!("providers.{name}");
        match provider.kind {
            ProviderKind::Openai => check_base_url(issues, &key, provider.base_url.as_deref()),
            ProviderKind::Mock => {
                if provider.base_url.is_some() {
                    issues.push(
                        &format!("{key}.base_url"),
                        "a mock provider has no base_url".into(),
                    );
                }
            }
            ProviderKind::Azure => issues.extend(check_azure(&key, provider)),
        }
        issues.extend(check_http_options(&key, provider, issues.file));
        if provider.timeout_ms == 0 {
            issues.push(
                &format!("{key}.timeout_ms"),
                "must be greater than 0".into(),
            );
        }
    }
}

/// An OpenAI-compatible provider's `base_url`: required, http(s).
fn check_base_url(issues: &mut Issues, key: &str, base_url: Option<&str>) {
    match base_url {
        None => issues.push(
            &format!("{key}.base_url"),
            "is required for kind = \"openai\"".into(),
        ),
        Some(raw) => match url::Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                if let Some(problem) = crate::upstream::http::base_url_problem(&u) {
                    issues.push(&format!("{key}.base_url"), format!("`{raw}` {problem}"));
                }
            }
            Ok(_) => issues.push(
                &format!("{key}.base_url"),
                format!("`{raw}` is not an http(s) URL"),
            ),
            Err(e) => issues.push(
                &format!("{key}.base_url"),
                format!("`{raw}` is not a URL: {e}"),
            ),
        },
    }
}

/// Each `[versions.<name>]`: its provider, model, price and mock table.
fn check_versions(issues: &mut Issues, config: &Config) {
    for (name, version) in &config.versions {
        let key = format!("versions.{name}");
        check_version_provider(issues, &key, version, &config.providers);
        if version.model.trim().is_empty() {
            issues.push(&format!("{key}.model"), "must not be empty".into());
        }
        let price = version.price;
        if [price.input_per_mtok, price.output_per_mtok]
            .iter()
            .any(|p| p.is_nan() || *p < 0.0)
        {
            issues.push(
                &format!("{key}.price"),
                "prices must be zero or more".into(),
            );
        }
        if let Some(mock) = &version.mock {
            check_mock(issues, &key, mock);
        }
    }
}

/// A version names a known provider, and has the keys that provider's kind needs.
fn check_version_provider(
    issues: &mut Issues,
    key: &str,
    version: &VersionConfig,
    providers: &BTreeMap<String, ProviderConfig>,
) {
    match providers.get(&version.provider) {
        None => issues.push(
            &format!("{key}.provider"),
            format!("unknown provider `{}`", version.provider),
        ),
        Some(p) if p.kind != ProviderKind::Mock && version.mock.is_some() => issues.push(
            &format!("{key}.mock"),
            "only versions on a mock provider take a mock table".into(),
        ),
        Some(p) if p.kind == ProviderKind::Azure => match &version.deployment {
            Some(d) if !d.trim().is_empty() => {}
            _ => issues.push(
                &format!("{key}.deployment"),
                format!(
                    "is required: provider `{}` is Azure OpenAI, which serves deployments",
                    version.provider
                ),
            ),
        },
        Some(_) if version.deployment.is_some() => issues.push(
            &format!("{key}.deployment"),
            "only versions on an Azure provider have a deployment".into(),
        ),
        Some(_) => {}
    }
}

fn check_mock(issues: &mut Issues, key: &str, mock: &MockConfig) {
    if !(0.0..=1.0).contains(&mock.error_rate) {
        issues.push(
            &format!("{key}.mock.error_rate"),
            "must be between 0 and 1".into(),
        );
    }
    if !(0.0..1.0).contains(&mock.jitter) {
        issues.push(
            &format!("{key}.mock.jitter"),
            "must be at least 0 and below 1".into(),
        );
    }
    if mock.tokens_per_s.is_nan() || mock.tokens_per_s <= 0.0 {
        issues.push(
            &format!("{key}.mock.tokens_per_s"),
            "must be greater than 0".into(),
        );
    }
}

/// The providers a route's stable version or the passthrough uses: these must have their key.
fn used_providers(issues: &mut Issues, config: &Config) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (name, route) in &config.routes {
        if let Err(why) = crate::types::RouteName::parse(name) {
            issues.push(&format!("routes.{name}"), why);
        }
        match config.versions.get(&route.stable) {
            None => issues.push(
                &format!("routes.{name}.stable"),
                format!("unknown version `{}`", route.stable),
            ),
            Some(v) => {
                used.insert(v.provider.clone());
            }
        }
    }
    if let Some(p) = &config.passthrough.provider {
        match config.providers.get(p) {
            None => issues.push("passthrough.provider", format!("unknown provider `{p}`")),
            Some(provider) if provider.kind == ProviderKind::Mock => issues.push(
                "passthrough.provider",
                format!("`{p}` is a mock provider; files and batches need a real upstream"),
            ),
            Some(_) => {
                used.insert(p.clone());
            }
        }
    }
    used
}

/// Each provider's API key (or Entra ID token) read from the environment.
fn provider_keys(
    issues: &mut Issues,
    providers: &BTreeMap<String, ProviderConfig>,
    used: &BTreeSet<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, Secret> {
    let mut keys = BTreeMap::new();
    for (name, provider) in providers {
        // An Entra ID token stands in for the key.
        let var = match (
            provider.kind,
            &provider.bearer_token_env,
            &provider.api_key_env,
        ) {
            (ProviderKind::Azure, Some(var), _) => var,
            (ProviderKind::Openai | ProviderKind::Azure, None, Some(var)) => var,
            _ => continue,
        };
        let key_name = if provider.bearer_token_env.is_some() {
            "bearer_token_env"
        } else {
            "api_key_env"
        };
        match env(var) {
            Some(value) if !value.is_empty() => {
                keys.insert(name.clone(), Secret::new(value));
            }
            // A provider only canary versions use may lack its key: a rollout to it is refused.
            _ if used.contains(name) => issues.push(
                &format!("providers.{name}.{key_name}"),
                format!("environment variable {var} is not set, and a route uses this provider"),
            ),
            _ => {}
        }
    }
    keys
}

/// The rollout policies in `dir` (`[policies] dir` beside the config file).
fn load_policies(
    issues: &mut Issues,
    config: &PoliciesConfig,
    dir: &Path,
) -> BTreeMap<String, Arc<Policy>> {
    let mut policies = BTreeMap::new();
    if dir.is_dir() {
        match policy::load_dir(dir) {
            Ok(loaded) => policies = loaded.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            Err(errors) => issues.found.extend(errors.0),
        }
    } else if config.dir != default_policies_dir() {
        issues.push(
            "policies.dir",
            format!("`{}` is not a folder", dir.display()),
        );
    }
    policies
}

/// The guardrail sets in `<policies dir>/guardrails`, and that each route's set is there.
fn load_guardrails(
    issues: &mut Issues,
    routes: &BTreeMap<String, RouteConfig>,
    policies_dir: &Path,
) -> BTreeMap<String, Arc<crate::guardrails::GuardrailSet>> {
    let guardrails = match crate::guardrails::load_dir(&policies_dir.join("guardrails")) {
        Ok(sets) => sets,
        Err(errors) => {
            issues.found.extend(errors.0);
            BTreeMap::new()
        }
    };
    for (name, route) in routes {
        if let Some(g) = &route.guardrails
            && !guardrails.contains_key(g)
        {
            issues.push(
                &format!("routes.{name}.guardrails"),
                format!(
                    "no guardrail policy `{g}` in {}",
                    policies_dir.join("guardrails").display()
                ),
            );
        }
    }
    guardrails
}

fn check_telemetry_and_limits(issues: &mut Issues, config: &Config) {
    if let Some(endpoint) = &config.telemetry.otlp_endpoint
        && url::Url::parse(endpoint).is_err()
    {
        issues.push(
            "telemetry.otlp_endpoint",
            format!("`{endpoint}` is not a URL"),
        );
    }
    if !(0.0..=1.0).contains(&config.telemetry.sample_ratio) {
        issues.push("telemetry.sample_ratio", "must be between 0 and 1".into());
    }
    if let Err(why) = config.limits.check() {
        issues.push("limits", why);
    }
}

/// `[cluster]` and `[database] retention` mistakes, as (dotted key, message).
fn check_cluster(config: &Config) -> Vec<(String, String)> {
    use crate::config::cluster::{MAX_REREAD, PrunedTable};
    let mut issues = Vec::new();
    let c = &config.cluster;
    for (key, v) in [
        ("heartbeat_ms", c.heartbeat_ms),
        ("lease_ms", c.lease_ms),
        ("flush_ms", c.flush_ms),
        ("reread_ms", c.reread_ms),
    ] {
        if v == 0 {
            issues.push((format!("cluster.{key}"), "must be greater than 0".into()));
        }
    }
    if c.reread() > MAX_REREAD {
        issues.push((
            "cluster.reread_ms".into(),
            format!("must be at most {} ms", MAX_REREAD.as_millis()),
        ));
    }
    let duration = |s: &str| {
        humantime::parse_duration(s)
            .map(|_| ())
            .map_err(|e| format!("`{s}` is not a duration such as \"30d\": {e}"))
    };
    if let Some(s) = &config.database.retention
        && let Err(message) = duration(s)
    {
        issues.push(("database.retention".into(), message));
    }
    for (table, s) in &config.database.retention_per_table {
        let key = format!("database.retention_per_table.{table}");
        if !PrunedTable::ALL.iter().any(|t| t.name() == table) {
            let known: Vec<&str> = PrunedTable::ALL.iter().map(|t| t.name()).collect();
            issues.push((key, format!("unknown table (known: {})", known.join(", "))));
        } else if let Err(message) = duration(s) {
            issues.push((key, message));
        }
    }
    issues
}

/// Azure OpenAI's own keys: an http(s) `endpoint` and an `api_version`; no `base_url`.
fn check_azure(key: &str, provider: &ProviderConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if provider.base_url.is_some() {
        out.push((
            format!("{key}.base_url"),
            "an Azure provider takes `endpoint` (https://<resource>.openai.azure.com), not base_url"
                .into(),
        ));
    }
    match &provider.endpoint {
        None => out.push((
            format!("{key}.endpoint"),
            "is required for kind = \"azure\" (https://<resource>.openai.azure.com)".into(),
        )),
        Some(raw) => match url::Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                if let Some(problem) = crate::upstream::http::base_url_problem(&u) {
                    out.push((format!("{key}.endpoint"), format!("`{raw}` {problem}")));
                } else if u.path().trim_matches('/').starts_with("openai") {
                    out.push((
                        format!("{key}.endpoint"),
                        format!("`{raw}`: give the resource URL only; sluice adds /openai/…"),
                    ));
                }
            }
            _ => out.push((
                format!("{key}.endpoint"),
                format!("`{raw}` is not an http(s) URL"),
            )),
        },
    }
    match provider.api_version.as_deref() {
        None | Some("") => out.push((
            format!("{key}.api_version"),
            "is required for kind = \"azure\" (e.g. \"2024-10-21\", or \"v1\")".into(),
        )),
        Some(_) => {}
    }
    if provider.api_key_env.is_none() && provider.bearer_token_env.is_none() {
        out.push((
            format!("{key}.api_key_env"),
            "an Azure provider needs api_key_env or bearer_token_env".into(),
        ));
    }
    out
}

/// Options of every provider that calls out over HTTP: headers, CA file, proxy.
fn check_http_options(key: &str, provider: &ProviderConfig, file: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let http = provider.kind != ProviderKind::Mock;
    let set = !provider.forward_headers.is_empty()
        || !provider.headers.is_empty()
        || provider.organization.is_some()
        || provider.project.is_some()
        || provider.ca_file.is_some()
        || provider.proxy.is_some();
    if !http && set {
        out.push((
            key.to_owned(),
            "a mock provider takes no headers, ca_file or proxy".into(),
        ));
        return out;
    }
    for name in &provider.forward_headers {
        if !crate::upstream::headers::forwardable(name) {
            out.push((
                format!("{key}.forward_headers"),
                format!("`{name}` may not be forwarded (credentials, hop-by-hop or sluice's own)"),
            ));
        }
    }
    for (name, value) in &provider.headers {
        let name_ok = axum::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .is_ok_and(|n| !crate::upstream::headers::NEVER_FORWARDED.contains(&n.as_str()));
        if !name_ok {
            out.push((
                format!("{key}.headers.{name}"),
                "is not a header sluice may set".into(),
            ));
        }
        if axum::http::HeaderValue::from_str(value).is_err() {
            out.push((
                format!("{key}.headers.{name}"),
                "is not a valid header value".into(),
            ));
        }
    }
    if let Some(ca) = &provider.ca_file {
        let path = file.parent().unwrap_or(Path::new("")).join(ca);
        match std::fs::read(&path) {
            Err(e) => out.push((
                format!("{key}.ca_file"),
                format!("cannot read {}: {e}", path.display()),
            )),
            Ok(pem) => {
                if crate::upstream::http::ca_certificates(&pem).map_or(true, |c| c.is_empty()) {
                    out.push((
                        format!("{key}.ca_file"),
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
            }
        }
    }
    if let Some(proxy) = &provider.proxy
        && !url::Url::parse(proxy).is_ok_and(|u| u.has_host())
    {
        out.push((
            format!("{key}.proxy"),
            format!("`{proxy}` is not a URL such as http://proxy:3128"),
        ));
    }
    out
}

/// Settings for unit tests: a mock provider `sim`, an in-memory SQLite database and an admin
/// token, followed by `rest` (the `[versions.*]` and `[routes.*]` a test needs). Panics on a
/// config that does not parse, which is the test's own mistake.
#[cfg(test)]
pub(crate) fn for_tests(rest: &str) -> Settings {
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite::memory:\"\n\
         [admin]\ntoken_env = \"ADMIN\"\n[providers.sim]\nkind = \"mock\"\n{rest}"
    );
    parse(
        std::path::Path::new("/nonexistent/sluice.toml"),
        &config,
        &|name| (name == "ADMIN").then(|| "a-token-long-enough-for-anyone".into()),
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Price;

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
        let local = listen_address("localhost:8093").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 8093, "{local}");
        let err = listen_address("localhost").expect_err("no port");
        assert!(err.contains("localhost:8080"), "{err}");
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
    fn cluster_and_retention_mistakes_name_their_keys() {
        let text = r#"
[database]
retention = "thirty days"
[database.retention_per_table]
nope = "7d"
requests = "7d"

[cluster]
reread_ms = 6000
lease_ms = 0
"#;
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t")]);
        let errors = parse(Path::new("s.toml"), text, &env).unwrap_err();
        let keys: Vec<&str> = errors.0.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "cluster.lease_ms",
                "cluster.reread_ms",
                "database.retention",
                "database.retention_per_table.nope"
            ]
        );
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
    fn a_base_url_whose_query_or_credentials_no_call_keeps_is_refused() {
        let text = r#"
[providers.q]
kind = "openai"
base_url = "https://gw.example/v1?tenant=7"
[providers.creds]
kind = "openai"
base_url = "https://user:pw@gw.example/v1"
[providers.az]
kind = "azure"
endpoint = "https://res.openai.azure.com/?x=1"
api_version = "v1"
api_key_env = "AZ_KEY"
"#;
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t")]);
        let errors = parse(Path::new("s.toml"), text, &env).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|i| i.to_string()).collect();
        for want in [
            "s.toml: providers.q.base_url: `https://gw.example/v1?tenant=7` has a query",
            "s.toml: providers.creds.base_url: `https://user:pw@gw.example/v1` carries credentials",
            "s.toml: providers.az.endpoint: `https://res.openai.azure.com/?x=1` has a query",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "missing `{want}` in {lines:#?}"
            );
        }
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
    fn azure_providers_are_checked_at_start() {
        let text = r#"
[providers.az]
kind = "azure"
endpoint = "https://res.openai.azure.com/openai/deployments/x"
api_key_env = "AZ_KEY"
forward_headers = ["x-tenant", "Authorization"]
[providers.good]
kind = "azure"
endpoint = "https://res.openai.azure.com"
api_version = "2024-10-21"
bearer_token_env = "AZ_TOKEN"
[versions.a]
provider = "az"
model = "gpt-4o"
[versions.b]
provider = "good"
model = "gpt-4o"
deployment = "gpt4o-prod"
[routes.chat]
stable = "b"
[passthrough]
provider = "nowhere"
"#;
        let env = env_with(&[("SLUICE_ADMIN_TOKEN", "t"), ("AZ_TOKEN", "entra")]);
        let errors = parse(Path::new("s.toml"), text, &env).unwrap_err();
        let lines: Vec<String> = errors.0.iter().map(|i| i.to_string()).collect();
        let expect = [
            "s.toml: providers.az.endpoint: `https://res.openai.azure.com/openai/deployments/x`: give the resource URL only",
            "s.toml: providers.az.api_version: is required",
            "s.toml: providers.az.forward_headers: `Authorization` may not be forwarded",
            "s.toml: versions.a.deployment: is required",
            "s.toml: passthrough.provider: unknown provider `nowhere`",
        ];
        for want in expect {
            assert!(
                lines.iter().any(|l| l.starts_with(want)),
                "missing `{want}` in {lines:#?}"
            );
        }
        assert_eq!(lines.len(), expect.len(), "{lines:#?}");
        // The Entra ID token stands in for the key.
        let ok = r#"
[providers.good]
kind = "azure"
endpoint = "https://res.openai.azure.com"
api_version = "v1"
bearer_token_env = "AZ_TOKEN"
[versions.b]
provider = "good"
model = "gpt-4o"
deployment = "gpt4o-prod"
[routes.chat]
stable = "b"
"#;
        let settings = parse(Path::new("s.toml"), ok, &env).unwrap();
        assert_eq!(settings.provider_keys["good"].expose(), "entra");
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
