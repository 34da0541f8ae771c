//! `GET /dashboard`: the operators' page. (Stub; to be written.)

use axum::response::Html;

pub async fn page() -> Html<&'static str> {
    Html("<!doctype html><title>sluice</title>")
}
