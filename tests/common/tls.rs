//! TLS in front of a test broker. Tansu 0.6.0 has no TLS listener (its `--cert`/`--key` options are parsed,
//! but the listener stays plaintext), so the tests terminate TLS here, as a TLS-terminating load balancer
//! or a service mesh sidecar would: clients speak TLS (optionally with a client certificate) to the proxy,
//! which forwards the decrypted bytes to the broker. The broker advertises the proxy's address, so every
//! connection a client makes after bootstrapping goes through TLS as well.
//!
//! The certificates are made at test time with rcgen: a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate (mutual TLS), and a second CA that signed nothing here (the wrong CA).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The test PKI, as PEM files in a directory (what librdkafka's `ssl.*.location` properties name).
pub struct Pki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// Another CA: a client trusting only this one must refuse the proxy.
    pub other_ca: PathBuf,
    pub client_cert: PathBuf,
    /// The client's key, unencrypted PKCS#8.
    pub client_key: PathBuf,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    (p.signed_by(&key, issuer).unwrap(), key)
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let authority = ca("aifinops test CA");
        let other = ca("some other CA");
        let (server, server_key) =
            leaf(&authority, "127.0.0.1", &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (client, client_key) = leaf(&authority, "aifinops", &[], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", authority.pem()),
            other_ca: write("other-ca.pem", other.pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            ca_der: authority.der().clone(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// The client key encrypted with `password` (PKCS#8, AES-256), for `ssl.key.password`; made by the
    /// `openssl` command (rcgen does not encrypt keys). `None` when the command is missing.
    pub fn encrypted_client_key(&self, password: &str) -> Option<PathBuf> {
        let out = self.client_key.with_file_name("client-encrypted.key");
        let st = std::process::Command::new("openssl")
            .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout"])
            .arg(format!("pass:{password}"))
            .arg("-in")
            .arg(&self.client_key)
            .arg("-out")
            .arg(&out)
            .status()
            .ok()?;
        st.success().then_some(out)
    }

    fn server_config(&self, client_auth: bool) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        builder.with_single_cert(self.server_chain.clone(), key).unwrap()
    }
}

/// What the proxy saw.
#[derive(Default)]
pub struct ProxyStats {
    /// TLS handshakes completed (and forwarded to the broker).
    pub handshakes: AtomicUsize,
    /// ... of which the client presented a certificate (verified against the CA).
    pub client_certs: AtomicUsize,
    /// Connections whose TLS handshake failed (a client that refused our certificate, plaintext, ...).
    pub failed: AtomicUsize,
}

/// A TLS -> TCP forwarder on 127.0.0.1:`port`, on a runtime of its own; stops when dropped.
pub struct TlsProxy {
    pub port: u16,
    pub stats: Arc<ProxyStats>,
    rt: Option<tokio::runtime::Runtime>,
}

impl TlsProxy {
    /// Terminates TLS on `port` (with the PKI's server certificate; with `client_auth`, only clients with a
    /// certificate of the PKI's CA get through) and forwards to 127.0.0.1:`upstream`.
    pub fn start(port: u16, upstream: u16, pki: &Pki, client_auth: bool) -> TlsProxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config(client_auth)));
        let stats = Arc::new(ProxyStats::default());
        let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))).expect("bind the TLS proxy");
        let st = stats.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(_) => {
                            st.failed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    };
                    st.handshakes.fetch_add(1, Ordering::SeqCst);
                    if tls.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        st.client_certs.fetch_add(1, Ordering::SeqCst);
                    }
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        TlsProxy { port, stats, rt: Some(rt) }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
