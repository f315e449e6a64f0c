//! The validated `xds.tls` settings (the xDS transport reads them; they live with the config).

use std::{path::PathBuf, time::Duration};

/// Validated `xds.tls` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain served to clients.
    pub cert_file: PathBuf,
    /// PEM private key of the certificate.
    pub key_file: PathBuf,
    /// PEM CA bundle that client certificates must chain to; `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// If not empty, only clients whose certificate has one of these SANs are served
    /// (`spiffe://...` or any URI as written, `dns:NAME` for a DNS name).
    pub allowed_identities: Vec<String>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
}
