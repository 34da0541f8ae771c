//! The admin API's OpenAPI document. (Stub; to be written.)

use axum::Json;
use serde_json::{Value, json};

pub async fn document() -> Json<Value> {
    Json(json!({"openapi": "3.1.0"}))
}
