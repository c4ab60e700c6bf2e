//! The dashboard: one HTML shell for every `/ui/...` page, and the scripts and
//! styles it loads, embedded in the binary.
//!
//! The pages are drawn in the browser by `ui/app.js`, which calls only the public
//! API (`/api/v1/...`) with the session cookie and its CSRF header, so the API stays
//! the one contract and the dashboard can do nothing a token holder cannot. Assets
//! are served under a name that carries a hash of their content, with
//! `Cache-Control: immutable`; the shell is `no-cache`, so a new binary never serves
//! a stale script. The Content-Security-Policy allows scripts and styles from this
//! origin only: no inline script, no `eval`.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest as _, Sha256};

/// The dashboard's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    /// `/ui/assets/<stem>.<hash>.<ext>`.
    url: String,
    body: &'static [u8],
    gzip: Vec<u8>,
    content_type: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const FILES: &[(&str, &[u8], &str)] = &[
    ("app.js", include_bytes!("../ui/app.js"), JS),
    ("app.css", include_bytes!("../ui/app.css"), CSS),
    (
        "favicon.svg",
        include_bytes!("../ui/favicon.svg"),
        "image/svg+xml",
    ),
    (
        "uPlot.js",
        include_bytes!("../ui/vendor/uPlot.iife.min.js"),
        JS,
    ),
    (
        "uPlot.css",
        include_bytes!("../ui/vendor/uPlot.min.css"),
        CSS,
    ),
    ("qrcode.js", include_bytes!("../ui/vendor/qrcode.js"), JS),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|&(name, body, content_type)| {
            let hash = hex::encode(&Sha256::digest(body)[..6]);
            let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
            Asset {
                name,
                url: format!("/ui/assets/{stem}.{hash}.{ext}"),
                body,
                gzip: gzip(body),
                content_type,
            }
        })
        .collect()
});

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

fn url(name: &str) -> &'static str {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map_or("", |a| a.url.as_str())
}

/// The page every dashboard path answers with; `app.js` draws the page the path
/// names. The lazily loaded libraries' URLs ride on `<body>`.
static SHELL: LazyLock<String> = LazyLock::new(|| {
    format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>Lattice</title>
<link rel="icon" href="{favicon}" type="image/svg+xml">
<link rel="stylesheet" href="{css}">
<script src="{js}" defer></script>
</head>
<body data-uplot-js="{uplot_js}" data-uplot-css="{uplot_css}" data-qrcode-js="{qrcode_js}">
<a class="skip" href="#main">Skip to content</a>
<div id="app"><main id="main" tabindex="-1"><p class="loading">Loading…</p></main></div>
<noscript><p class="noscript">The dashboard needs JavaScript. The API (<code>/api/v1</code>) and the <code>lattice</code> command-line tool do not.</p></noscript>
</body>
</html>
"##,
        favicon = url("favicon.svg"),
        css = url("app.css"),
        js = url("app.js"),
        uplot_js = url("uPlot.js"),
        uplot_css = url("uPlot.css"),
        qrcode_js = url("qrcode.js"),
    )
});

/// `GET /`: to the dashboard.
pub async fn root() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, HeaderValue::from_static("/ui/")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
    )
        .into_response()
}

/// `GET /ui/...`: the shell (the page itself is drawn by the script).
pub async fn shell() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
        ],
        SHELL.as_str(),
    )
        .into_response()
}

/// `GET /ui/assets/{file}`: an embedded file by its hashed name, cached for a year;
/// gzip when the client takes it.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let wanted = format!("/ui/assets/{file}");
    let Some(a) = ASSETS.iter().find(|a| a.url == wanted) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
            "no such asset (the dashboard was updated: reload the page)",
        )
            .into_response();
    };
    let takes_gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = if takes_gzip {
        (
            [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
            a.gzip.clone(),
        )
            .into_response()
    } else {
        a.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_a_content_hash_in_its_name_and_the_shell_links_them() {
        for a in ASSETS.iter() {
            assert!(a.url.starts_with("/ui/assets/"), "{}", a.url);
            assert_eq!(a.url.matches('.').count(), 2, "{}", a.url);
            assert!(!a.gzip.is_empty());
        }
        for name in ["app.js", "app.css", "favicon.svg"] {
            assert!(SHELL.contains(url(name)), "{name}");
        }
        assert!(!SHELL.contains("<script>"), "no inline script");
    }
}
