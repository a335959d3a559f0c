//! The proxy's ephemeral CA and the certificates it shows the program.
//!
//! A CA is made for each start of the proxy, in memory. It signs one leaf
//! certificate per bound host, all at start, and is then dropped: its
//! private key exists only in this process (which the CLI makes
//! non-dumpable and memory-locked, `harden()`), and only until the leaves
//! are signed. The CA is name-constrained to the bound hosts, so a program
//! that trusts it for this run trusts it for nothing else.

use std::collections::HashMap;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

/// The TLS server configurations for the bound hosts, and the CA's
/// certificate for the program's trust store.
pub(crate) struct Interception {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    by_host: HashMap<String, Arc<ServerConfig>>,
}

impl Interception {
    /// Makes the CA and a leaf for each of `hosts` (DNS names).
    pub(crate) fn new(hosts: &[String]) -> Result<Interception, String> {
        let fail = |what: &str, e: rcgen::Error| format!("cannot make the proxy's {what}: {e}");
        let ca_key = KeyPair::generate().map_err(|e| fail("CA key", e))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA", e))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params
            .distinguished_name
            .push(DnType::CommonName, "keyward proxy CA (ephemeral, this run only)");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let mut permitted: Vec<GeneralSubtree> = hosts.iter().map(|h| GeneralSubtree::DnsName(h.clone())).collect();
        permitted.dedup();
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
        let ca = params.self_signed(&ca_key).map_err(|e| fail("CA", e))?;

        let mut by_host = HashMap::new();
        for host in hosts {
            if by_host.contains_key(host) {
                continue;
            }
            let key = KeyPair::generate().map_err(|e| fail("leaf key", e))?;
            let mut params = CertificateParams::new(vec![host.clone()]).map_err(|e| fail("leaf certificate", e))?;
            params.distinguished_name.push(DnType::CommonName, host.as_str());
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let leaf = params
                .signed_by(&key, &ca, &ca_key)
                .map_err(|e| fail("leaf certificate", e))?;
            let chain = vec![CertificateDer::from(leaf.der().to_vec())];
            let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("cannot configure TLS: {e}"))?
                .with_no_client_auth()
                .with_single_cert(chain, private)
                .map_err(|e| format!("cannot use the leaf certificate for {host}: {e}"))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            by_host.insert(host.clone(), Arc::new(config));
        }
        // ca_key is dropped here: nothing can be signed any more.
        Ok(Interception {
            ca_pem: ca.pem(),
            by_host,
        })
    }

    /// The TLS server configuration for `host`, if it is bound.
    pub(crate) fn for_host(&self, host: &str) -> Option<Arc<ServerConfig>> {
        self.by_host.get(host).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leaf_per_bound_host() {
        let i = Interception::new(&["api.billing.example".into(), "localhost".into(), "localhost".into()]).unwrap();
        assert!(i.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(i.for_host("localhost").is_some());
        assert!(i.for_host("api.billing.example").is_some());
        assert!(i.for_host("other.example").is_none());
    }
}
