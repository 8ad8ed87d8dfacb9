//! The stored copy's unit tests: freshness, storability, weights, headers.

use super::*;

#[test]
fn freshness_follows_s_maxage_max_age_then_expires() {
    let now = SystemTime::now();
    let resp = |headers: &[(&str, String)]| {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), v.as_str()).unwrap();
        }
        r
    };
    let expires = httpdate::fmt_http_date(now + Duration::from_secs(120));
    let secs = |r: &ResponseHeader| fresh_for(r, now).as_secs();
    let e = resp(&[("expires", expires.clone())]);
    assert!((118..=120).contains(&secs(&e)), "{}", secs(&e));
    let m = resp(&[
        ("cache-control", "max-age=30".into()),
        ("expires", expires.clone()),
    ]);
    assert_eq!(secs(&m), 30);
    let s = resp(&[("cache-control", "max-age=30, s-maxage=90".into())]);
    assert_eq!(secs(&s), 90);
    assert_eq!(secs(&resp(&[("cache-control", "no-store".into())])), 0);
    assert_eq!(secs(&resp(&[("expires", "not a date".into())])), 0);
    assert_eq!(secs(&resp(&[])), 0);
}

#[test]
fn client_credentials_make_a_request_unstorable() {
    let sensitive: Vec<String> = crate::config::SENSITIVE_QUERY
        .iter()
        .map(|s| s.to_string())
        .collect();
    let req = |target: &str, header: Option<(&str, &str)>| {
        let mut r = pingora::http::RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        if let Some((k, v)) = header {
            r.append_header(k.to_string(), v).unwrap();
        }
        r
    };
    assert!(storable_request(
        &req("/v1/x?page=2&keyboard=1", None),
        &sensitive
    ));
    assert!(storable_request(&req("/v1/x", None), &sensitive));
    for bad in [
        "/v1/x?api_key=S",
        "/v1/x?a=1&API_KEY=S",
        "/v1/x?token",
        "/v1/x?sig=1&b=2",
    ] {
        assert!(!storable_request(&req(bad, None), &sensitive), "{bad}");
    }
    assert!(!storable_request(
        &req("/v1/x", Some(("authorization", "Bearer c"))),
        &sensitive
    ));
    assert!(!storable_request(
        &req("/v1/x", Some(("cookie", "s=1"))),
        &sensitive
    ));
    let mut post = req("/v1/x", None);
    post.set_method(http::Method::POST);
    assert!(!storable_request(&post, &sensitive));
}

#[test]
fn kept_header_values_do_not_pin_the_read_buffer() {
    // As Pingora parses a header block: values are slices of one buffer.
    let block = bytes::Bytes::from(vec![b'a'; 16 * 1024]);
    let v = HeaderValue::from_maybe_shared(block.slice(10..20)).unwrap();
    assert_eq!(
        v.as_bytes().as_ptr(),
        block[10..].as_ptr(),
        "a slice, as parsed"
    );
    let kept = owned(&v);
    assert_eq!(kept, v);
    assert_ne!(
        kept.as_bytes().as_ptr(),
        v.as_bytes().as_ptr(),
        "copied out"
    );
    let mut secret = v.clone();
    secret.set_sensitive(true);
    assert!(owned(&secret).is_sensitive());
}

#[test]
fn weights_count_key_headers_size_class_and_entry_overhead() {
    let h = [(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    )];
    let w = |body| weigh(70, &h, body) as usize;
    let fixed = 70 + "content-type".len() + 16 + HEADER_OVERHEAD + ENTRY_OVERHEAD;
    assert_eq!(w(100), fixed + allocation_size(100));
    assert!(
        w(40_000) >= fixed + 40_000,
        "a body is never weighed below its size"
    );
    assert!(w(1) < w(1000) && w(1000) < w(40_000));
}

#[test]
fn allocation_sizes_follow_jemallocs_classes() {
    for (n, class) in [
        (1, 8),
        (8, 8),
        (9, 16),
        (17, 32),
        (100, 112),
        (129, 160),
        (169, 192),
        (4_097, 5_120),
        (14_336, 14_336),
        (16_385, 20_480),
        (39_901, 40_960),
        (40_960, 40_960),
        (40_961, 49_152),
        (1 << 20, 1 << 20),
    ] {
        assert_eq!(allocation_size(n), class, "{n}");
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

fn cc(values: &[&str]) -> CacheControl {
    let mut h = http::HeaderMap::new();
    for v in values {
        h.append(http::header::CACHE_CONTROL, hv(v));
    }
    CacheControl::from_headers(&h)
}

#[test]
fn cache_control() {
    let c = cc(&["public, max-age=60", "stale-if-error=300, must-revalidate"]);
    assert_eq!(c.max_age, Some(60));
    assert_eq!(c.stale_if_error, Some(300));
    assert!(c.must_revalidate && !c.no_store && !c.private);
    assert!(cc(&["No-Store"]).no_store);
    // RFC 9111 §5.2.2.10: s-maxage implies proxy-revalidate.
    let c = cc(&["s-maxage=60"]);
    assert_eq!(c.s_maxage, Some(60));
    assert!(c.must_revalidate);
    assert!(!cc(&["max-age=60, stale-if-error=30"]).must_revalidate);
    assert!(cc(&[r#"private="set-cookie", max-age=5"#]).private);
    assert!(cc(&["private"]).private);
    assert_eq!(cc(&[]), CacheControl::default());
}

#[test]
fn a_copys_header_has_its_length_and_an_age_from_the_origin_date() {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now - Duration::from_secs(100));
    let r = Recorded {
        headers: vec![
            (http::header::DATE, hv(&date)),
            (http::header::ETAG, hv("\"v1\"")),
            (HeaderName::from_static("x-vendor"), hv("a")),
            (HeaderName::from_static("x-vendor"), hv("b")),
        ],
        body: Bytes::from_static(b"12345"),
        stored_at: now - Duration::from_secs(10),
        fresh_for: Duration::ZERO,
        must_revalidate: false,
        stale_if_error: None,
    };
    let owner = Arc::new(UpstreamStatus::new("u"));
    let c = CachedResponse::new(r, owner, StoreKey::primary_of("u", "/"));
    let h = c.response_header(now).unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.headers["content-length"], "5");
    let age: u64 = h.headers["age"].to_str().unwrap().parse().unwrap();
    assert!((100..=101).contains(&age), "older than the store: {age}");
    assert_eq!(h.headers.get_all("x-vendor").iter().count(), 2);
    assert_eq!(h.headers["etag"], "\"v1\"");
    // Without a Date, the age since the store.
    let r = Recorded {
        headers: vec![],
        ..c.recorded.clone_for_test()
    };
    let c = CachedResponse::new(r, c.owner.clone(), c.store.clone());
    assert_eq!(c.served_age(now).as_secs(), 10);
}

impl Recorded {
    fn clone_for_test(&self) -> Recorded {
        Recorded {
            headers: self.headers.clone(),
            body: self.body.clone(),
            stored_at: self.stored_at,
            fresh_for: self.fresh_for,
            must_revalidate: self.must_revalidate,
            stale_if_error: self.stale_if_error,
        }
    }
}

#[test]
fn servable_honours_directives() {
    let now = SystemTime::now();
    let mk = |age: u64, fresh: u64, mr: bool, sie: Option<u64>| Recorded {
        headers: vec![],
        body: Bytes::new(),
        stored_at: now - Duration::from_secs(age),
        fresh_for: Duration::from_secs(fresh),
        must_revalidate: mr,
        stale_if_error: sie.map(Duration::from_secs),
    };
    let day = Duration::from_secs(86400);
    assert!(mk(100, 0, false, None).servable(now, day, true));
    assert!(!mk(100, 0, false, None).servable(now, Duration::from_secs(50), true));
    assert!(!mk(100, 60, true, None).servable(now, day, true));
    assert!(mk(30, 60, true, None).servable(now, day, true));
    assert!(mk(100, 60, true, None).servable(now, day, false));
    assert!(!mk(100, 10, false, Some(30)).servable(now, day, true));
    assert!(mk(30, 10, false, Some(30)).servable(now, day, true));
}
