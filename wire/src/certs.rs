//! Development certificates: one CA per deployment and one certificate per identity, written as
//! PEM files the TLS loader reads. Production deployments may use any CA that issues certificates
//! of the same shape (one `*.homeport` DNS SAN, serverAuth + clientAuth).

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};

use crate::{Identity, WireError};

/// The CA certificate's file name inside a dev certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name inside a dev certificate directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// Certificates start one day in the past so that peers with slightly wrong clocks accept them.
const CLOCK_SKEW_ALLOWANCE_DAYS: i64 = 1;
/// Dev certificates live long enough never to expire during a test or a demo deployment.
const DEV_VALIDITY_DAYS: i64 = 3652;

/// One certificate to issue: whom it names and the addresses it is reachable at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertSpec {
    pub identity: Identity,
    pub ips: Vec<IpAddr>,
}

/// Loads the CA in `out_dir` (`ca.pem` + `ca.key`), or creates it when neither file exists.
/// Never overwrites: replacing a CA silently would invalidate every certificate already handed
/// out. Returns the path of `ca.pem`.
pub fn ensure_dev_ca(out_dir: &Path) -> Result<PathBuf, WireError> {
    let cert_path = out_dir.join(CA_CERT_FILE);
    let key_path = out_dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            load_dev_ca(out_dir)?;
            Ok(cert_path)
        }
        (false, false) => {
            let (not_before, not_after) = validity();
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params
                .distinguished_name
                .push(DnType::CommonName, "homeport dev CA");
            params
                .distinguished_name
                .push(DnType::OrganizationName, "homeport");
            // Path length 0: this CA signs end-entity certificates only, never another CA.
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            params.not_before = not_before;
            params.not_after = not_after;
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|source| cert_gen("the dev CA", source))?;
            let cert = params
                .self_signed(&key)
                .map_err(|source| cert_gen("the dev CA", source))?;
            // Key first: a crash in between leaves a key without a certificate, which the next
            // call reports instead of pairing a new certificate with a stale key.
            write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&cert_path, cert.pem().as_bytes(), false)?;
            Ok(cert_path)
        }
        (has_cert, _) => {
            let (present, missing) = if has_cert {
                (CA_CERT_FILE, CA_KEY_FILE)
            } else {
                (CA_KEY_FILE, CA_CERT_FILE)
            };
            Err(WireError::DevCa {
                dir: out_dir.to_path_buf(),
                detail: format!(
                    "{present} exists but {missing} does not: restore {missing}, or delete {present} to create a new CA (every certificate must then be re-issued)"
                ),
            })
        }
    }
}

/// Issues `<out_dir>/<name>.pem` and `<name>.key` for `identity`, signed by the CA already in
/// `out_dir` (see [`ensure_dev_ca`]). Replaces an existing certificate of the same name.
pub fn issue_dev_cert(
    out_dir: &Path,
    identity: &Identity,
    ips: &[IpAddr],
) -> Result<(), WireError> {
    let issuer = load_dev_ca(out_dir)?;
    issue_with(&issuer, out_dir, identity, ips).map(|_| ())
}

/// Creates `out_dir` and the CA if missing, then (re-)issues every certificate. Returns the paths
/// written: `ca.pem` first, then `<name>.pem` and `<name>.key` for each spec in order.
pub fn generate_dev_certs(
    out_dir: &Path,
    specs: &[DevCertSpec],
) -> Result<Vec<PathBuf>, WireError> {
    let mut names = HashSet::new();
    for spec in specs {
        if !names.insert(spec.identity.name.as_str()) {
            return Err(WireError::BadIdentity {
                value: spec.identity.dns_name(),
                reason: format!(
                    "name `{}` appears twice; certificate files are named after it, so names must be unique",
                    spec.identity.name
                ),
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| WireError::WriteFile {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut written = vec![ensure_dev_ca(out_dir)?];
    let issuer = load_dev_ca(out_dir)?;
    for spec in specs {
        let (cert, key) = issue_with(&issuer, out_dir, &spec.identity, &spec.ips)?;
        written.push(cert);
        written.push(key);
    }
    Ok(written)
}

fn issue_with(
    issuer: &Issuer<'static, KeyPair>,
    out_dir: &Path,
    identity: &Identity,
    ips: &[IpAddr],
) -> Result<(PathBuf, PathBuf), WireError> {
    identity.validate()?;
    let stem = identity.name.as_str();
    if format!("{stem}.pem") == CA_CERT_FILE {
        return Err(WireError::BadIdentity {
            value: identity.dns_name(),
            reason: format!(
                "name `{stem}` would overwrite the CA's {CA_CERT_FILE}; choose another name"
            ),
        });
    }
    let dns = identity.dns_name();
    let (not_before, not_after) = validity();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, dns.clone());
    let dns_san = dns
        .clone()
        .try_into()
        .map_err(|source| cert_gen(&dns, source))?;
    params.subject_alt_names = std::iter::once(SanType::DnsName(dns_san))
        .chain(ips.iter().map(|ip| SanType::IpAddress(*ip)))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Every process is both a server and a client of other processes.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| cert_gen(&dns, source))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| cert_gen(&dns, source))?;
    let cert_path = out_dir.join(format!("{stem}.pem"));
    let key_path = out_dir.join(format!("{stem}.key"));
    write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_file(&cert_path, cert.pem().as_bytes(), false)?;
    Ok((cert_path, key_path))
}

fn load_dev_ca(out_dir: &Path) -> Result<Issuer<'static, KeyPair>, WireError> {
    let cert_path = out_dir.join(CA_CERT_FILE);
    let key_path = out_dir.join(CA_KEY_FILE);
    let cert_pem = read_text("CA certificate", &cert_path)?;
    let key_pem = read_text("CA private key", &key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| WireError::TlsFileInvalid {
        what: "CA private key",
        path: key_path.clone(),
        detail: e.to_string(),
    })?;
    let invalid_cert = |detail: String| WireError::TlsFileInvalid {
        what: "CA certificate",
        path: cert_path.clone(),
        detail,
    };
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| invalid_cert(e.to_string()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| invalid_cert(e.to_string()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(WireError::DevCa {
            dir: out_dir.to_path_buf(),
            detail: format!(
                "{CA_KEY_FILE} does not belong to {CA_CERT_FILE}: restore the matching pair, or delete both to create a new CA (every certificate must then be re-issued)"
            ),
        });
    }
    Issuer::from_ca_cert_der(&der, key).map_err(|e| invalid_cert(e.to_string()))
}

fn read_text(what: &'static str, path: &Path) -> Result<String, WireError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WireError::TlsFileMissing {
                what,
                path: path.to_path_buf(),
            }
        } else {
            WireError::TlsFileRead {
                what,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let not_before = OffsetDateTime::now_utc() - Duration::days(CLOCK_SKEW_ALLOWANCE_DAYS);
    (not_before, not_before + Duration::days(DEV_VALIDITY_DAYS))
}

fn cert_gen(what: &str, source: rcgen::Error) -> WireError {
    WireError::CertGen {
        what: what.to_string(),
        source,
    }
}

/// Writes through a temporary file and a rename so a reader never sees half a key, and creates
/// private keys with mode 0600 from the start (no window where they are world-readable).
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), WireError> {
    let err = |source| WireError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    // A leftover from a crash may have other permissions; `mode` applies only on creation.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}
