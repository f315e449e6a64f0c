//! TLS and mutual TLS for the xDS port: certificates reloaded when their files change, and an
//! optional allow-list of client identities (URI or DNS subject alternative names).

use std::sync::{Arc, RwLock};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio_rustls::{
    rustls::{
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    TlsAcceptor,
};

pub use crate::config::tls::TlsSettings;

/// Builds rustls server configs from files and swaps them in when the files change.
#[derive(Clone)]
pub struct TlsReloader {
    settings: TlsSettings,
    current: Arc<RwLock<(TlsAcceptor, [u8; 32])>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsReloader")
            .field("settings", &self.settings)
            .finish()
    }
}

fn files_hash(settings: &TlsSettings) -> anyhow::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let files = [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.client_ca_file.as_ref(),
    ];
    for path in files.into_iter().flatten() {
        let bytes = std::fs::read(path)
            .with_context(|| format!("xds.tls: cannot read {}", path.display()))?;
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}

fn build_acceptor(settings: &TlsSettings) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&settings.cert_file)
            .with_context(|| {
                format!(
                    "xds.tls.cert_file: cannot read {}",
                    settings.cert_file.display()
                )
            })?
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "xds.tls.cert_file: {} is not a PEM certificate chain",
                    settings.cert_file.display()
                )
            })?;
    anyhow::ensure!(
        !certificates.is_empty(),
        "xds.tls.cert_file: {} holds no certificate",
        settings.cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(&settings.key_file).with_context(|| {
        format!(
            "xds.tls.key_file: {} holds no PEM private key",
            settings.key_file.display()
        )
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("xds.tls: TLS versions")?;
    let builder = match &settings.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(path).with_context(|| {
                format!("xds.tls.client_ca_file: cannot read {}", path.display())
            })? {
                let certificate = certificate.with_context(|| {
                    format!("xds.tls.client_ca_file: {} is not PEM", path.display())
                })?;
                roots.add(certificate).with_context(|| {
                    format!(
                        "xds.tls.client_ca_file: bad CA certificate in {}",
                        path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("xds.tls.client_ca_file: building the client verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .context("xds.tls: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl TlsReloader {
    /// Loads the files once (errors name the file and what is wrong).
    pub fn new(settings: TlsSettings) -> anyhow::Result<Self> {
        let hash = files_hash(&settings)?;
        let acceptor = build_acceptor(&settings)?;
        Ok(Self {
            settings,
            current: Arc::new(RwLock::new((acceptor, hash))),
        })
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current.read().ok().map(|current| current.0.clone())
    }

    /// Checks the files once; swaps in a new config if they changed and are valid.
    pub fn reload_if_changed(&self) {
        let hash = match files_hash(&self.settings) {
            Ok(hash) => hash,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "TLS files unreadable; keeping the current certificates");
                return;
            }
        };
        if self
            .current
            .read()
            .map(|current| current.1 == hash)
            .unwrap_or(true)
        {
            return;
        }
        match build_acceptor(&self.settings) {
            Ok(acceptor) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (acceptor, hash);
                }
                tracing::info!(cert = %self.settings.cert_file.display(), "TLS certificates reloaded");
            }
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "new TLS files rejected; keeping the current certificates")
            }
        }
    }

    /// Polls the files until the process ends.
    pub async fn watch(self) {
        let mut interval = tokio::time::interval(self.settings.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.reload_if_changed();
        }
    }

    /// Whether a client presenting `leaf` (DER) may be served.
    pub fn allows(&self, leaf: Option<&CertificateDer<'_>>) -> bool {
        if self.settings.allowed_identities.is_empty() {
            return true;
        }
        let Some(leaf) = leaf else { return false };
        identities(leaf)
            .iter()
            .any(|identity| self.settings.allowed_identities.contains(identity))
    }
}

/// The URI SANs (as written) and DNS SANs (as `dns:NAME`) of a certificate.
pub fn identities(certificate: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, parsed)) = X509Certificate::from_der(certificate.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            GeneralName::DNSName(dns) => Some(format!("dns:{dns}")),
            _ => None,
        })
        .collect()
}
