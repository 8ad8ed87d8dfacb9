//! Cache keys: what a copy is kept under in every tier, and how a key
//! read back from the persist file maps to one (old raw keys included).

use http::HeaderName;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};

/// The key of a request's copy without `Vary`: the upstream's name and a
/// SHA-256 of the path and query (see [`key_of`]).
pub fn primary_key(upstream: &str, req: &RequestHeader) -> String {
    key_of(
        upstream,
        req.uri.path_and_query().map_or("/", |p| p.as_str()),
    )
}

/// `upstream` + `\n` + the hex SHA-256 of `path_and_query`. Keys are
/// hashes so that neither the persist file nor Redis ever holds a raw
/// path or query (a client's `?api_key=` included); the memory tier uses
/// the same keys so that a copy read back from either lands where a
/// request will look.
pub fn key_of(upstream: &str, path_and_query: &str) -> String {
    let mut k = String::with_capacity(upstream.len() + 65);
    k.push_str(upstream);
    k.push('\n');
    crate::config::push_hex(&mut k, &Sha256::digest(path_and_query.as_bytes()));
    k
}

/// The key of one `Vary` variant: the primary key, `\n`, and the hex
/// SHA-256 of the request's values of the named headers (each
/// `\nname=v1,v2`).
pub fn variant_key(primary: &str, names: &[HeaderName], req: &RequestHeader) -> String {
    let mut h = Sha256::new();
    for n in names {
        h.update(b"\n");
        h.update(n.as_str().as_bytes());
        h.update(b"=");
        if n == http::header::ACCEPT_ENCODING {
            h.update(normalized_codings(req).as_bytes());
            continue;
        }
        for (i, v) in req.headers.get_all(n).iter().enumerate() {
            if i > 0 {
                h.update(b",");
            }
            h.update(v.as_bytes());
        }
    }
    variant_of(primary, h)
}

/// `Accept-Encoding` as the set of codings it accepts (RFC 9111 §4.1
/// allows normalizing before matching `Vary`): order, case, whitespace and
/// weights ignored, `q=0` codings left out. `gzip, deflate` and
/// `deflate,gzip;q=0.8` select the same copy.
fn normalized_codings(req: &RequestHeader) -> String {
    let mut codings: Vec<String> = req
        .headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let mut it = part.split(';');
            let name = it.next()?.trim().to_ascii_lowercase();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (!name.is_empty() && !refused).then_some(name)
        })
        .collect();
    codings.sort();
    codings.dedup();
    codings.join(",")
}

fn variant_of(primary: &str, h: Sha256) -> String {
    let mut k = String::with_capacity(primary.len() + 65);
    k.push_str(primary);
    k.push('\n');
    crate::config::push_hex(&mut k, &h.finalize());
    k
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A persisted key read back: the primary key, and the variant key when
/// the copy is one variant. Keys written before keys were hashed (raw
/// path, query and `name=value` lines) are hashed here; `migrated` says so.
pub(super) struct ReadKey {
    pub(super) upstream: String,
    pub(super) primary: String,
    pub(super) variant: Option<String>,
    pub(super) migrated: bool,
}

pub(super) fn read_key(key: &str) -> Option<ReadKey> {
    let (upstream, rest) = key.split_once('\n')?;
    let mut lines = rest.split('\n');
    let first = lines.next()?;
    let second = lines.next();
    if is_digest(first) && second.is_none_or(is_digest) && lines.next().is_none() {
        return Some(ReadKey {
            upstream: upstream.to_string(),
            primary: format!("{upstream}\n{first}"),
            variant: second.map(|_| key.to_string()),
            migrated: false,
        });
    }
    // The old form: `upstream\npath?query` then `\nname=value` per header.
    let primary = key_of(upstream, first);
    let varied = &rest[first.len()..];
    let variant = (!varied.is_empty()).then(|| {
        let mut h = Sha256::new();
        h.update(varied.as_bytes());
        variant_of(&primary, h)
    });
    Some(ReadKey {
        upstream: upstream.to_string(),
        primary,
        variant,
        migrated: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn keys_hold_hashes_never_the_path_or_query() {
        let r = req("/v1/items?api_key=CLIENTSECRET&x=1", &[]);
        let k = primary_key("emoji", &r);
        assert!(k.starts_with("emoji\n"));
        assert!(!k.contains("items") && !k.contains("CLIENTSECRET"), "{k}");
        assert_eq!(k, key_of("emoji", "/v1/items?api_key=CLIENTSECRET&x=1"));
        assert_ne!(k, primary_key("emoji", &req("/v1/items?x=1", &[])));
        assert_ne!(k, primary_key("other", &r));
        let names = [HeaderName::from_static("accept-language")];
        let a = variant_key(&k, &names, &req("/", &[("accept-language", "de")]));
        let b = variant_key(&k, &names, &req("/", &[("accept-language", "fr")]));
        assert!(a.starts_with(&format!("{k}\n")) && !a.contains("de"));
        assert_ne!(a, b);
        // Accept-Encoding: the set of codings, however written.
        let ae = [http::header::ACCEPT_ENCODING];
        let v = |s: &str| variant_key(&k, &ae, &req("/", &[("accept-encoding", s)]));
        assert_eq!(v("gzip, deflate"), v("deflate,gzip"));
        assert_eq!(v("gzip, deflate"), v("Deflate;q=0.8 , GZIP"));
        assert_eq!(v("gzip, deflate"), v("gzip, deflate, br;q=0"));
        assert_ne!(v("gzip, deflate"), v("gzip"));
        assert_ne!(v("gzip"), v("br"));
    }

    #[test]
    fn persisted_keys_read_back_in_both_forms() {
        let r = req("/v1/x?a=1", &[("accept-language", "de, en")]);
        let primary = primary_key("emoji", &r);
        let names = [HeaderName::from_static("accept-language")];
        let variant = variant_key(&primary, &names, &r);
        let k = read_key(&primary).unwrap();
        assert_eq!(
            (k.primary.as_str(), k.variant, k.migrated),
            (primary.as_str(), None, false)
        );
        let k = read_key(&variant).unwrap();
        assert_eq!(k.primary, primary);
        assert_eq!(k.variant.as_deref(), Some(variant.as_str()));
        assert!(!k.migrated);
        // The form written before keys were hashed maps to the same keys.
        let k = read_key("emoji\n/v1/x?a=1").unwrap();
        assert_eq!((k.primary.as_str(), k.migrated), (primary.as_str(), true));
        let k = read_key("emoji\n/v1/x?a=1\naccept-language=de, en").unwrap();
        assert_eq!(k.variant.as_deref(), Some(variant.as_str()));
        assert_eq!(k.upstream, "emoji");
        assert!(read_key("no newline").is_none());
    }
}
