//! Where a call goes: the OpenAI operation (a path under `/v1`) and, for each provider kind,
//! the URL that serves it.
//!
//! In: an [`Endpoint`] (method and `/v1`-relative path, query included) and the version's
//! upstream model (the deployment, on Azure). Out: the full URL. OpenAI-compatible servers
//! take `{base_url}/{path}`. Azure OpenAI takes, with a dated `api_version`,
//! `{endpoint}/openai/deployments/{deployment}/{path}?api-version=…` for operations on one
//! deployment (chat completions, embeddings, completions, audio, images) and
//! `{endpoint}/openai/{path}?api-version=…` for the rest (responses, files, batches); with
//! `api_version = "v1"` (Azure's GA v1 surface) `{endpoint}/openai/v1/{path}` for everything,
//! the deployment being the body's `model`.

use std::borrow::Cow;

use axum::http::Method;

pub(crate) use crate::types::Api;

impl Api {
    /// The upstream operation of a measured request of this API (a forwarded one keeps its
    /// own path and never takes this).
    pub(crate) fn endpoint(self) -> Endpoint<'static> {
        match self {
            Api::Chat | Api::Forwarded => Endpoint::chat(),
            Api::Responses => Endpoint::responses(),
            Api::Embeddings => Endpoint::embeddings(),
        }
    }
}

/// One upstream operation: the HTTP method and the path below `/v1/` (query included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint<'a> {
    pub(crate) method: Method,
    /// E.g. `chat/completions`, `responses/resp_1/input_items?limit=5`.
    pub(crate) path: Cow<'a, str>,
}

impl<'a> Endpoint<'a> {
    /// `POST chat/completions`.
    pub(crate) fn chat() -> Self {
        Self::post("chat/completions")
    }

    /// `POST responses`.
    pub(crate) fn responses() -> Self {
        Self::post("responses")
    }

    /// `POST embeddings`.
    pub(crate) fn embeddings() -> Self {
        Self::post("embeddings")
    }

    /// `POST {path}`.
    pub(crate) fn post(path: &'a str) -> Self {
        Self {
            method: Method::POST,
            path: Cow::Borrowed(path),
        }
    }

    /// `method` on `path` (below `/v1/`, query included).
    pub(crate) fn new(method: Method, path: impl Into<Cow<'a, str>>) -> Self {
        Self {
            method,
            path: path.into(),
        }
    }

    /// The path without its query.
    pub(crate) fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// Whether Azure serves this operation under one deployment's URL.
    fn per_deployment(&self) -> bool {
        let route = self.route();
        ["chat/completions", "embeddings", "completions"].contains(&route)
            || route.starts_with("audio/")
            || route.starts_with("images/")
    }

    /// `{base_url}/{path}` for an OpenAI-compatible server (`base_url` ends in `/v1`).
    pub(crate) fn openai_url(&self, base_url: &str) -> String {
        format!("{}/{}", base_url.trim_end_matches('/'), self.path)
    }

    /// The Azure OpenAI URL of this operation for `deployment`.
    pub(crate) fn azure_url(&self, endpoint: &str, api_version: &str, deployment: &str) -> String {
        let endpoint = endpoint.trim_end_matches('/');
        if api_version == AZURE_V1 {
            return format!("{endpoint}/openai/v1/{}", self.path);
        }
        let sep = if self.path.contains('?') { '&' } else { '?' };
        let version =
            url::form_urlencoded::byte_serialize(api_version.as_bytes()).collect::<String>();
        if self.per_deployment() {
            let deployment =
                url::form_urlencoded::byte_serialize(deployment.as_bytes()).collect::<String>();
            format!(
                "{endpoint}/openai/deployments/{deployment}/{}{sep}api-version={version}",
                self.path
            )
        } else {
            format!("{endpoint}/openai/{}{sep}api-version={version}", self.path)
        }
    }
}

/// The `api_version` that selects Azure's GA v1 surface (`/openai/v1/…`, no query).
pub(crate) const AZURE_V1: &str = "v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_urls_append_the_path_to_the_base() {
        assert_eq!(
            Endpoint::chat().openai_url("https://api.openai.com/v1/"),
            "https://api.openai.com/v1/chat/completions"
        );
        let e = Endpoint::new(Method::GET, "responses/resp_1/input_items?limit=2");
        assert_eq!(
            e.openai_url("http://h/v1"),
            "http://h/v1/responses/resp_1/input_items?limit=2"
        );
    }

    #[test]
    fn azure_urls_put_deployments_in_the_path_and_the_version_in_the_query() {
        let ep = "https://res.openai.azure.com/";
        assert_eq!(
            Endpoint::chat().azure_url(ep, "2024-10-21", "gpt4o-prod"),
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            Endpoint::embeddings().azure_url(ep, "2024-10-21", "emb"),
            "https://res.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21"
        );
        assert_eq!(
            Endpoint::responses().azure_url(ep, "2025-04-01-preview", "gpt4o-prod"),
            "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
        );
        assert_eq!(
            Endpoint::new(Method::GET, "responses/resp_1?include=x").azure_url(
                ep,
                "2025-04-01-preview",
                "d"
            ),
            "https://res.openai.azure.com/openai/responses/resp_1?include=x&api-version=2025-04-01-preview"
        );
    }

    #[test]
    fn azure_v1_uses_the_openai_shaped_surface() {
        assert_eq!(
            Endpoint::responses().azure_url("https://res.openai.azure.com", AZURE_V1, "d"),
            "https://res.openai.azure.com/openai/v1/responses"
        );
        assert_eq!(
            Endpoint::chat().azure_url("https://res.openai.azure.com", AZURE_V1, "d"),
            "https://res.openai.azure.com/openai/v1/chat/completions"
        );
    }
}
