//! TLS on the public listener: a certificate resolver whose key pair can be
//! swapped at run time, so SIGHUP picks up a renewed certificate without a
//! restart or a dropped connection (handshakes in progress keep the old one),
//! and the checks a new certificate chain must pass first.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{CertificateDer, ClientHello, CryptoProvider, ResolvesServerCert};
use x509_parser::certificate::X509Certificate;

/// Certificate and key (PEM files) of the public TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loads and checks a PEM certificate chain and private key.
pub fn load_certified_key(tls: &ListenTls) -> Result<Arc<CertifiedKey>, String> {
    pingora::tls::install_default_crypto_provider();
    let (cert, key) = (tls.cert.display(), tls.key.display());
    let (certs, private_key) =
        match pingora::tls::load_certs_and_key_files(&cert.to_string(), &key.to_string()) {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                return Err(format!(
                    "no certificate in `{cert}` or no private key in `{key}` (PEM expected)"
                ));
            }
            Err(_) => return Err(format!("cannot read `{cert}` or `{key}`")),
        };
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider is installed".to_string())?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|_| format!("`{key}` holds a private key of an unsupported type"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|_| {
        format!("the private key in `{key}` does not match the certificate in `{cert}`")
    })?;
    Ok(Arc::new(certified))
}

/// A certificate chain that may be served, with what is odd about it.
pub struct Checked {
    pub key: Arc<CertifiedKey>,
    /// Things worth a warning that do not stop the chain from being served.
    pub warnings: Vec<String>,
}

/// [`check_chain`] now on a key pair already loaded (the one the route file's
/// validation keeps, `config::ListenCert`), so the files are not read again:
/// what the listener serves at start and after a reload. Errors are fixed
/// words (no path, no certificate field), so they may be printed anywhere.
pub fn check_loaded(key: Arc<CertifiedKey>) -> Result<Checked, String> {
    let warnings = check_chain(&key.cert, SystemTime::now())?;
    Ok(Checked { key, warnings })
}

/// Checks a chain (leaf first) at `now`. A leaf outside its validity period is an
/// error: serving it would fail every client. A later certificate that did not
/// sign the one before it (an unrelated certificate, or the chain out of order),
/// or an expired one, gives a warning: clients that hold the right intermediate
/// still connect, so the chain is served.
///
/// Messages never quote a certificate field, only positions in the chain.
pub fn check_chain(chain: &[CertificateDer<'_>], now: SystemTime) -> Result<Vec<String>, String> {
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    let Some(leaf_der) = chain.first() else {
        return Err("the certificate file holds no certificate".to_string());
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(leaf_der) else {
        return Err("the certificate (the first in the file) is not valid X.509 DER".to_string());
    };
    let validity = leaf.validity();
    if now > validity.not_after.timestamp() {
        return Err("the certificate (the first in the file) has expired".to_string());
    }
    if now < validity.not_before.timestamp() {
        return Err("the certificate (the first in the file) is not valid yet".to_string());
    }

    let mut warnings = Vec::new();
    let mut previous = leaf;
    for (i, der) in chain.iter().enumerate().skip(1) {
        // Positions as people count them: the leaf is certificate 1.
        let (n, signed) = (i + 1, i);
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            warnings.push(format!(
                "certificate {n} in the chain is not valid X.509 DER; clients cannot use it"
            ));
            break;
        };
        if !signed_by(&previous, &cert) {
            warnings.push(format!(
                "certificate {n} in the chain did not sign certificate {signed} before it \
                 (an unrelated certificate, or the chain is out of order); \
                 clients without the right intermediate will refuse the chain"
            ));
        }
        if now > cert.validity().not_after.timestamp() {
            warnings.push(format!("certificate {n} in the chain has expired"));
        }
        previous = cert;
    }
    Ok(warnings)
}

/// Whether `issuer`'s key made the signature on `cert`, checked with the
/// signature algorithms of the installed TLS crypto provider (the ones a TLS
/// client would use). The names must chain too.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    if cert.issuer().as_raw() != issuer.subject().as_raw() {
        return false;
    }
    pingora::tls::install_default_crypto_provider();
    let Some(provider) = CryptoProvider::get_default() else {
        // Nothing to check with: do not claim a broken chain.
        return true;
    };
    let public_key = &issuer.public_key().subject_public_key.data;
    let message = cert.tbs_certificate.as_ref();
    let signature = &cert.signature_value.data;
    // An algorithm that does not match the key or the signature fails cleanly,
    // so trying each is enough to learn whether this key made the signature.
    provider
        .signature_verification_algorithms
        .all
        .iter()
        .any(|alg| alg.verify_signature(public_key, message, signature).is_ok())
}

/// The listener's certificate, replaceable while serving.
pub struct ReloadableCert(ArcSwap<CertifiedKey>);

impl ReloadableCert {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        ReloadableCert(ArcSwap::new(key))
    }

    /// Serves `key` (already loaded) from now on if its chain passes
    /// [`check_loaded`]; on error the current certificate stays. Returns the
    /// warnings about the new chain.
    pub fn replace(&self, key: Arc<CertifiedKey>) -> Result<Vec<String>, String> {
        let checked = check_loaded(key)?;
        self.0.store(checked.key);
        Ok(checked.warnings)
    }
}

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableCert")
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    const Y2030: u64 = 1_893_456_000;

    struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    fn ca(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf valid from 2020 to 2040, signed by `ca`.
    fn leaf(ca: &Ca) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        params
            .signed_by(&key, &ca.cert, &ca.key)
            .unwrap()
            .der()
            .clone()
    }

    fn der(ca: &Ca) -> CertificateDer<'static> {
        ca.cert.der().clone()
    }

    #[test]
    fn leaf_validity_period_is_enforced() {
        let ca = ca("test CA");
        let chain = [leaf(&ca)];
        assert_eq!(check_chain(&chain, at(Y2030)), Ok(vec![]));
        let err = check_chain(&chain, at(Y2030 * 2)).unwrap_err();
        assert!(err.contains("has expired"), "{err}");
        let err = check_chain(&chain, at(1_500_000_000)).unwrap_err();
        assert!(err.contains("not valid yet"), "{err}");
    }

    #[test]
    fn the_issuer_after_its_leaf_is_fine_an_unrelated_certificate_is_not() {
        let ca1 = ca("test CA");
        let other = ca("another CA");
        let good = [leaf(&ca1), der(&ca1)];
        assert_eq!(check_chain(&good, at(Y2030)), Ok(vec![]));

        let unrelated = [leaf(&ca1), der(&other)];
        let warnings = check_chain(&unrelated, at(Y2030)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("certificate 2 in the chain did not sign certificate 1"),
            "{warnings:?}"
        );

        // Same name, other key: the names chain but the signature does not.
        let impostor = ca("test CA");
        let warnings = check_chain(&[leaf(&ca1), der(&impostor)], at(Y2030)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");

        // Out of order: the CA first is the "leaf" and the real leaf did not sign it.
        let warnings = check_chain(&[der(&ca1), leaf(&ca1)], at(Y2030)).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn messages_name_positions_never_certificate_fields() {
        let ca1 = ca("Secretive CA Name");
        let other = ca("Other Secretive Name");
        let mut all = check_chain(&[leaf(&ca1), der(&other)], at(Y2030)).unwrap();
        all.push(check_chain(&[leaf(&ca1)], at(Y2030 * 2)).unwrap_err());
        all.push(check_chain(&[CertificateDer::from(vec![1, 2, 3])], at(Y2030)).unwrap_err());
        all.push(check_chain(&[], at(Y2030)).unwrap_err());
        for m in &all {
            assert!(!m.contains("Secretive"), "{m}");
            assert!(!m.contains("localhost"), "{m}");
            assert!(!m.contains("2040"), "{m}");
        }
    }
}
