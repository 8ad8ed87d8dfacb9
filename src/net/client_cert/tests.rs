use super::*;

fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["client.test".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k, cert.der().to_vec())
}

#[test]
fn a_matching_pair_loads_with_the_leafs_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, der) = pair(dir.path(), "a");
    let cc = load(&c, &k).unwrap();
    let want = format!("sha256:{}", crate::config::hex(&Sha256::digest(&der)));
    assert_eq!(cc.fingerprint, want);
    assert_eq!(cc.fingerprint.len(), "sha256:".len() + 64);
    assert!(cc.not_after > cc.not_before);
    assert_eq!(cc.key.leaf().borrow_raw_cert(), &der);
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let (c, _, _) = pair(dir.path(), "a");
    let (_, k, _) = pair(dir.path(), "b");
    let e = load(&c, &k).unwrap_err();
    assert!(matches!(e, ClientCertError::Mismatch { .. }), "{e}");
    assert_eq!(e.field(), "tls.client_key");
    assert!(e.to_string().contains("is not the key of"), "{e}");
}

#[test]
fn bad_files_are_errors_never_panics_and_never_show_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, _) = pair(dir.path(), "a");
    let key_text = std::fs::read_to_string(&k).unwrap();
    let bad_der = dir.path().join("bad.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    let bad_key = dir.path().join("bad.key");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let cases: [(&Path, &Path, &str); 6] = [
        (&bad_der, &k, "tls.client_cert"),
        (&empty, &k, "tls.client_cert"),
        (&dir.path().join("missing.pem"), &k, "tls.client_cert"),
        (&c, &empty, "tls.client_key"),
        (&c, &bad_key, "tls.client_key"),
        (&c, &c, "tls.client_key"),
    ];
    for (cert, key, field) in cases {
        let e = load(cert, key).unwrap_err();
        assert_eq!(e.field(), field, "{e}");
        let text = format!("{e} {e:?}");
        for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "key material in {text}");
        }
    }
}

#[test]
fn expiring_in_the_last_third_and_at_most_thirty_days() {
    let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let day = Duration::from_secs(86_400);
    // A 3-day certificate: expiring in its last day.
    let (nb, na) = (t0, t0 + 3 * day);
    assert_eq!(state_at(nb, na, t0 + day), CertState::Active);
    assert_eq!(state_at(nb, na, t0 + 2 * day), CertState::Expiring);
    assert_eq!(state_at(nb, na, na), CertState::Expired);
    assert_eq!(state_at(nb, na, t0 - day), CertState::NotYetValid);
    // A year-long one: expiring in its last 30 days only.
    let na = t0 + 365 * day;
    assert_eq!(state_at(nb, na, na - 31 * day), CertState::Active);
    assert_eq!(state_at(nb, na, na - 30 * day), CertState::Expiring);
}
