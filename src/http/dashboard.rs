//! `GET /dashboard`: the operators' page, one self-contained HTML document built from
//! `assets/dashboard/` (index.html with app.css and app.js inlined), embedded in the binary.
//!
//! The page itself carries no data and needs no credential: it asks for the admin token once
//! (or takes it from `#token=…`), keeps it in the tab's `sessionStorage`, and polls the
//! admin API with it every 2 s. Its Content-Security-Policy allows exactly the inlined
//! script and style (by hash) and same-origin `fetch`, nothing else: no CDN, no frames.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use sha2::{Digest, Sha256};

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const CSS: &str = include_str!("../../assets/dashboard/app.css");
const JS: &str = include_str!("../../assets/dashboard/app.js");

const CSS_MARK: &str = "/*__APP_CSS__*/";
const JS_MARK: &str = "/*__APP_JS__*/";

struct Page {
    html: String,
    csp: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    debug_assert!(INDEX.contains(CSS_MARK) && INDEX.contains(JS_MARK));
    let html = INDEX.replacen(CSS_MARK, CSS, 1).replacen(JS_MARK, JS, 1);
    let csp = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        csp_hash(JS),
        csp_hash(CSS)
    );
    Page { html, csp }
});

pub(crate) async fn page() -> impl IntoResponse {
    let page = &*PAGE;
    (
        [
            (header::CONTENT_SECURITY_POLICY, page.csp.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        Html(page.html.as_str()),
    )
}

/// `sha256-<base64>` of an inline element's text, as CSP wants it.
fn csp_hash(text: &str) -> String {
    format!("sha256-{}", base64(&Sha256::digest(text.as_bytes())))
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_inlines_its_assets_and_hashes_them() {
        assert!(!PAGE.html.contains(CSS_MARK) && !PAGE.html.contains(JS_MARK));
        assert!(PAGE.html.contains("function renderGates"));
        assert!(!PAGE.html.contains("src=\"http") && !PAGE.html.contains("href=\"http"));
        assert!(PAGE.csp.contains(&csp_hash(JS)));
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }
}
