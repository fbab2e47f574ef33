//! Bearer tokens with two roles. `read-only` may read everything (the API, the event stream,
//! metrics); `operator` may also change things (every POST and DELETE). Without a token table the
//! gateway is open (the coordinator only allows that with an explicit `--insecure`).
//!
//! Tokens come from a file or the `FERRY_TOKENS` environment variable, one `ROLE:TOKEN` per line
//! or separated by spaces or commas; `#` starts a comment. The event stream also accepts the token
//! as `?token=` because browsers' EventSource cannot send headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Operator,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "read-only" | "readonly" | "read" => Some(Role::ReadOnly),
            _ => None,
        }
    }
}

/// Shortest token accepted: a guessable token is no authentication.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    entries: Vec<(Role, String)>,
}

impl Tokens {
    /// Parses `ROLE:TOKEN` entries; the error names the entry (never the token).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            for item in line.split([' ', ',', '\t']).filter(|s| !s.is_empty()) {
                let Some((role, token)) = item.split_once(':') else {
                    return Err(format!(
                        "line {}: entry {:?} is not ROLE:TOKEN (ROLE is operator or read-only)",
                        n + 1,
                        item.chars().take(12).collect::<String>()
                    ));
                };
                let role = Role::parse(role).ok_or_else(|| {
                    format!("line {}: role {role:?} is not operator or read-only", n + 1)
                })?;
                if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(format!(
                        "line {}: a {role:?} token must be at least {MIN_TOKEN_LEN} printable characters",
                        n + 1
                    ));
                }
                entries.push((role, token.to_string()));
            }
        }
        if entries.is_empty() {
            return Err("no tokens given (expected ROLE:TOKEN entries)".into());
        }
        Ok(Tokens { entries })
    }

    /// The role a presented token carries (constant time in the token's bytes).
    pub fn role(&self, presented: &str) -> Option<Role> {
        let mut found = None;
        for (role, token) in &self.entries {
            if eq_constant_time(token.as_bytes(), presented.as_bytes()) {
                found = found.max(Some(*role));
            }
        }
        found
    }
}

fn eq_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random token (32 hex digits from the kernel's random source).
pub fn generate() -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn presented(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    if req.uri().path() == "/api/events" {
        let q = req.uri().query()?;
        return q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| t.to_string());
    }
    None
}

/// Middleware over `/api/*` and `/metrics`.
pub async fn check(State(tokens): State<Arc<Tokens>>, req: Request, next: Next) -> Response {
    let needs = if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        Role::ReadOnly
    } else {
        Role::Operator
    };
    let Some(token) = presented(&req) else {
        return unauthorized("this API needs a token: send `Authorization: Bearer TOKEN` (`ferry up` prints one; the CLI reads --token or FERRY_TOKEN)");
    };
    match tokens.role(&token) {
        None => unauthorized("the token is not valid for this cluster"),
        Some(role) if role < needs => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} needs an operator token; this token is read-only",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_string())
        .into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_and_refuses_weak_or_malformed_entries() {
        let t = Tokens::parse("# cluster tokens\noperator:0123456789abcdef0123\nread-only:fedcba9876543210fedc, read:aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(t.role("0123456789abcdef0123"), Some(Role::Operator));
        assert_eq!(t.role("fedcba9876543210fedc"), Some(Role::ReadOnly));
        assert_eq!(t.role("0123456789abcdef012"), None);
        assert_eq!(t.role(""), None);
        assert!(Tokens::parse("operator:short").unwrap_err().contains("at least 16"));
        assert!(Tokens::parse("admin:0123456789abcdef0123").unwrap_err().contains("role"));
        assert!(Tokens::parse("0123456789abcdef0123").unwrap_err().contains("ROLE:TOKEN"));
        assert!(Tokens::parse("  # nothing\n").is_err());
    }

    #[test]
    fn generated_tokens_are_long_and_distinct() {
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
