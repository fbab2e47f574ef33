//! The built dashboard (web/dist) at `/`: files as they are, and `index.html` for every other
//! path so the app's own routes survive a reload. Without a build, `/` says how to make one.

use std::convert::Infallible;
use std::path::PathBuf;

use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

pub type WebService = BoxCloneSyncService<Request, Response, Infallible>;

pub fn service(dir: Option<PathBuf>) -> WebService {
    match dir {
        Some(dir) => {
            let index = dir.join("index.html");
            let files = ServeDir::new(dir).fallback(ServeFile::new(index));
            BoxCloneSyncService::new(ServiceExt::<Request>::map_response(
                files,
                |r: Response<tower_http::services::fs::ServeFileSystemResponseBody>| {
                    let (mut parts, body) = r.into_parts();
                    // index.html must be re-read after an upgrade; the hashed assets may be cached.
                    if parts
                        .headers
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"))
                    {
                        parts.headers.insert(
                            header::CACHE_CONTROL,
                            header::HeaderValue::from_static("no-cache"),
                        );
                    }
                    Response::from_parts(parts, axum::body::Body::new(body))
                },
            ))
        }
        None => BoxCloneSyncService::new(tower::service_fn(|_req: Request| async {
            Ok::<_, Infallible>(
                (
                    StatusCode::NOT_FOUND,
                    Html(
                        "<!doctype html><title>ferry</title><h1>ferry</h1><p>The dashboard is not built. \
                         Run <code>scripts/setup.sh</code> (or <code>npm --prefix web ci &amp;&amp; npm --prefix web run build</code>) \
                         and restart, or point <code>--web-dir</code> / <code>FERRY_WEB_DIR</code> at a built <code>web/dist</code>. \
                         The REST API is at <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p>",
                    ),
                )
                    .into_response(),
            )
        })),
    }
}

/// Where a dashboard build is, if any: `FERRY_WEB_DIR`-style explicit choice first, then
/// `web/dist` of the checkout the binary was built in (target/<profile>/ferry), then the
/// installed location.
pub fn locate(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if let Some(d) = explicit {
        return Some(d);
    }
    let exe = std::env::current_exe().ok()?;
    let candidates = [
        exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()).map(|r| r.join("web/dist")),
        Some(PathBuf::from("/usr/share/ferry/web")),
    ];
    candidates.into_iter().flatten().find(|d| d.join("index.html").is_file())
}
