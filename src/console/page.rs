//! `GET /admin`: the console page, its script and its style, compiled into
//! the binary (`src/console/assets/`): plain HTML, CSS and one JavaScript
//! module, nothing fetched from another origin, no build step.
//!
//! Every answer carries a `Content-Security-Policy` that allows this origin
//! alone (no inline script or style, no frames of the page), `nosniff`, no
//! referrer. The page is never cached (it is where a session begins); the
//! script and style are revalidated by their `ETag`.

use bytes::Bytes;
use http::{header, Response, StatusCode};

/// The page's policy: this origin only, nothing inline, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One of the console's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// Revalidated by ETag rather than never stored.
    revalidate: bool,
}

const PAGE: Asset = Asset {
    body: include_str!("assets/index.html"),
    content_type: "text/html; charset=utf-8",
    revalidate: false,
};
const SCRIPT: Asset = Asset {
    body: include_str!("assets/console.js"),
    content_type: "text/javascript; charset=utf-8",
    revalidate: true,
};
const ICON: Asset = Asset {
    body: include_str!("assets/favicon.svg"),
    content_type: "image/svg+xml",
    revalidate: true,
};
const STYLE: Asset = Asset {
    body: include_str!("assets/console.css"),
    content_type: "text/css; charset=utf-8",
    revalidate: true,
};

/// What a console path is: the page without its slash (redirected, so that
/// the page's relative links keep a stage prefix), or one of its files.
pub enum Found {
    /// `/admin`: to `admin/`.
    Redirect,
    /// A file.
    File(Asset),
}

/// What `path` is, if it is the console's.
pub fn find(path: &str) -> Option<Found> {
    if path == "/admin" {
        return Some(Found::Redirect);
    }
    asset(path).map(Found::File)
}

/// `/admin` to `admin/`: relative, so that a prefix the gateway does not see
/// (an API Gateway stage) is kept by the browser.
pub fn redirect() -> Response<Bytes> {
    with_headers(Response::builder())
        .status(StatusCode::PERMANENT_REDIRECT)
        .header(header::LOCATION, "admin/")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Bytes::new())
        .expect("a static head")
}

/// The file a path names, if it is one of the console's.
pub fn asset(path: &str) -> Option<Asset> {
    match path {
        "/admin/" => Some(PAGE),
        "/admin/console.js" => Some(SCRIPT),
        "/admin/console.css" => Some(STYLE),
        "/admin/favicon.svg" => Some(ICON),
        _ => None,
    }
}

/// A file's ETag: a hash of its bytes (FNV-1a; the files are the binary's own).
fn etag(body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

fn with_headers(builder: http::response::Builder) -> http::response::Builder {
    builder
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("x-frame-options", "DENY")
        .header("cross-origin-opener-policy", "same-origin")
}

/// The answer for `asset` (`304` when the client's copy is current).
pub fn serve(asset: Asset, if_none_match: Option<&[u8]>) -> Response<Bytes> {
    let builder = with_headers(Response::builder());
    let response = if asset.revalidate {
        let tag = etag(asset.body);
        if if_none_match.is_some_and(|v| v == tag.as_bytes()) {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .header(header::ETAG, tag)
                .header(header::CACHE_CONTROL, "no-cache")
                .body(Bytes::new())
                .expect("a static head");
        }
        builder
            .header(header::ETAG, tag)
            .header(header::CACHE_CONTROL, "no-cache")
    } else {
        builder.header(header::CACHE_CONTROL, "no-store")
    };
    response
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.content_type)
        .body(Bytes::from_static(asset.body.as_bytes()))
        .expect("a static head")
}

/// What a browser on another machine gets over plain http.
pub fn https_required() -> Response<Bytes> {
    with_headers(Response::builder())
        .status(StatusCode::FORBIDDEN)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Bytes::from_static(
            include_str!("assets/https.html").as_bytes(),
        ))
        .expect("a static head")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_carry_the_policy_and_revalidate() {
        let page = serve(asset("/admin/").unwrap(), None);
        assert!(matches!(find("/admin"), Some(Found::Redirect)));
        assert_eq!(redirect().headers()["location"], "admin/");
        assert_eq!(page.status(), 200);
        assert_eq!(page.headers()["cache-control"], "no-store");
        assert_eq!(page.headers()["content-security-policy"], CSP);
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let script = serve(asset("/admin/console.js").unwrap(), None);
        let tag = script.headers()["etag"].as_bytes().to_vec();
        assert_eq!(
            script.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        let again = serve(asset("/admin/console.js").unwrap(), Some(&tag));
        assert_eq!(again.status(), 304);
        assert!(again.body().is_empty());
        assert_eq!(asset("/admin/x"), None);
        assert_eq!(asset("/admin/../etc/passwd"), None);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere() {
        for file in [
            PAGE.body,
            SCRIPT.body,
            STYLE.body,
            include_str!("assets/https.html"),
        ] {
            // The SVG namespace is a name, not a fetch.
            let file = file.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !file.contains("http://") && !file.contains("https://"),
                "another origin"
            );
            assert!(!file.contains("innerHTML"), "values are set as text");
        }
        assert!(!PAGE.body.contains("<script>"), "no inline script");
        assert!(!PAGE.body.contains("style="), "no inline style");
        assert!(PAGE
            .body
            .contains(r#"<script type="module" src="console.js">"#));
    }
}
