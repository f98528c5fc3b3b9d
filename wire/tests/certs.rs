//! Dev certificate generation: what `homeport certs` relies on.

use std::net::{IpAddr, Ipv4Addr};

use homeport_wire::{
    DevCertSpec, Identity, Role, WireError, cert_identity, ensure_dev_ca, generate_dev_certs,
    issue_dev_cert,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn spec(name: &str, role: Role, region: &str, ip: [u8; 4]) -> DevCertSpec {
    DevCertSpec {
        identity: Identity::new(name, role, region).unwrap(),
        ips: vec![IpAddr::V4(Ipv4Addr::from(ip))],
    }
}

#[test]
fn certificates_name_their_identity_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    let specs = [
        spec("sh-g1-a", Role::QueueNode, "sh", [127, 0, 0, 11]),
        spec("operator", Role::Operator, "all", [127, 0, 0, 1]),
    ];
    let written = generate_dev_certs(&out, &specs).unwrap();
    assert_eq!(
        written,
        vec![
            out.join("ca.pem"),
            out.join("sh-g1-a.pem"),
            out.join("sh-g1-a.key"),
            out.join("operator.pem"),
            out.join("operator.key"),
        ]
    );
    for s in &specs {
        let der =
            CertificateDer::from_pem_file(out.join(format!("{}.pem", s.identity.name))).unwrap();
        assert_eq!(cert_identity(&der).unwrap(), s.identity);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let ips: Vec<_> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect();
        let expected: Vec<Vec<u8>> = s
            .ips
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            })
            .collect();
        assert_eq!(ips, expected);
        // Valid now, and for years.
        assert!(cert.validity().is_valid());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert!(years >= 9, "validity is only {years} years");
    }
}

#[cfg(unix)]
#[test]
fn private_keys_are_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    generate_dev_certs(
        dir.path(),
        &[spec("region-sh", Role::Region, "sh", [127, 0, 0, 1])],
    )
    .unwrap();
    for key in ["ca.key", "region-sh.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} has mode {mode:o}");
    }
}

#[test]
fn regenerating_keeps_the_ca_and_reissues_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [spec("region-sh", Role::Region, "sh", [127, 0, 0, 1])];
    generate_dev_certs(dir.path(), &specs).unwrap();
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let cert_before = std::fs::read(dir.path().join("region-sh.pem")).unwrap();
    generate_dev_certs(dir.path(), &specs).unwrap();
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    assert_ne!(
        std::fs::read(dir.path().join("region-sh.pem")).unwrap(),
        cert_before
    );
    // A certificate issued separately later is signed by the same CA.
    let late = Identity::new("region-bj", Role::Region, "bj").unwrap();
    issue_dev_cert(dir.path(), &late, &[]).unwrap();
    assert_eq!(
        ensure_dev_ca(dir.path()).unwrap(),
        dir.path().join("ca.pem")
    );
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
}

#[test]
fn half_a_ca_or_a_foreign_key_is_reported_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    ensure_dev_ca(dir.path()).unwrap();
    let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();

    std::fs::remove_file(dir.path().join("ca.key")).unwrap();
    let err = ensure_dev_ca(dir.path()).unwrap_err();
    assert!(matches!(err, WireError::DevCa { .. }), "{err:?}");
    assert!(err.to_string().contains("ca.key"), "{err}");
    assert!(
        !dir.path().join("ca.key").exists(),
        "must not create a new key"
    );

    // A key from another CA.
    let other = tempfile::tempdir().unwrap();
    ensure_dev_ca(other.path()).unwrap();
    std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
    let err = ensure_dev_ca(dir.path()).unwrap_err();
    assert!(matches!(err, WireError::DevCa { .. }), "{err:?}");

    std::fs::write(dir.path().join("ca.key"), ca_key).unwrap();
    ensure_dev_ca(dir.path()).unwrap();
}

#[test]
fn issuing_without_a_ca_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::new("region-sh", Role::Region, "sh").unwrap();
    let err = issue_dev_cert(dir.path(), &id, &[]).unwrap_err();
    assert!(matches!(err, WireError::TlsFileMissing { .. }), "{err:?}");
    assert!(!dir.path().join("ca.pem").exists());
}

#[test]
fn names_that_would_collide_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let twice = [
        spec("x", Role::Region, "sh", [127, 0, 0, 1]),
        spec("x", Role::Gateway, "sh", [127, 0, 0, 2]),
    ];
    assert!(matches!(
        generate_dev_certs(dir.path(), &twice),
        Err(WireError::BadIdentity { .. })
    ));
    let ca = [spec("ca", Role::Region, "sh", [127, 0, 0, 1])];
    assert!(matches!(
        generate_dev_certs(dir.path(), &ca),
        Err(WireError::BadIdentity { .. })
    ));
}

#[test]
fn a_certificate_must_name_exactly_one_identity() {
    let names = |sans: &[&str]| {
        let certified = rcgen::generate_simple_self_signed(
            sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        cert_identity(certified.cert.der())
    };
    assert_eq!(
        names(&["example.org", "a.region.sh.homeport", "127.0.0.1"]).unwrap(),
        Identity::new("a", Role::Region, "sh").unwrap()
    );
    for sans in [
        &["example.org"][..],
        &["a.region.sh.homeport", "b.region.sh.homeport"][..],
        &["a.pilot.sh.homeport"][..],
    ] {
        assert!(
            matches!(names(sans), Err(WireError::BadIdentity { .. })),
            "{sans:?} must not yield an identity"
        );
    }
}
