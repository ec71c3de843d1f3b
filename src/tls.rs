//! TLS on the public listener: a certificate resolver whose key pair can be
//! swapped at run time, so SIGHUP picks up a renewed certificate without a
//! restart or a dropped connection (handshakes in progress keep the old one).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

use crate::config::ListenTls;

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

/// The listener's certificate, replaceable while serving.
pub struct ReloadableCert(ArcSwap<CertifiedKey>);

impl ReloadableCert {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        ReloadableCert(ArcSwap::new(key))
    }

    /// Re-reads the files; on error the current certificate stays.
    pub fn reload(&self, tls: &ListenTls) -> Result<(), String> {
        let key = load_certified_key(tls)?;
        self.0.store(key);
        Ok(())
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
