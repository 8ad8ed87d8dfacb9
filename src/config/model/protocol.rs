//! How graceway speaks to an upstream (`upstreams[].http`).

/// `upstreams[].http`: the HTTP version graceway speaks to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// `https://`: HTTP/2 when the server offers it in ALPN, else
    /// HTTP/1.1; `http://`: HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    H1,
    /// HTTP/2 only: ALPN `h2` on `https://`, prior knowledge (h2c) on
    /// `http://`.
    H2,
}

impl HttpVersion {
    pub const ALL: [HttpVersion; 3] = [HttpVersion::Auto, HttpVersion::H1, HttpVersion::H2];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Auto => "auto",
            HttpVersion::H1 => "h1",
            HttpVersion::H2 => "h2",
        }
    }
}
