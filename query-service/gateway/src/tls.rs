//! TLS for the gateway's Flight endpoint (rustls): a certificate and key from PEM files,
//! optionally a CA whose client certificates are required (mutual TLS), reloaded when the files
//! change.
//!
//! ```text
//!  TcpListener ──► accept (slot) ──► io thread: handshake task (current ServerConfig) ──► tonic
//!                                                      ▲
//!  watch files (mtime poll) ──► load ──────────────────┘ swap; a bad file keeps the running config
//! ```
//!
//! Each connection takes the config current when it arrives, so a renewed certificate (e.g. a
//! cert-manager Secret update) applies to new connections without a restart, while established
//! ones keep theirs. Handshakes run in their own tasks on the io thread that will serve the
//! connection, so a slow or silent client cannot hold up others, and a TLS client's queries take
//! the same path through the gateway as a plain one's (its io thread, the fetch exchange).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::transport::server::{Connected, TcpConnectInfo};

use quiver_core::accepted::Accepted;

/// How often the certificate files are checked for changes; polling also sees a Kubernetes
/// Secret update, which swaps a symlink instead of writing the file.
const RELOAD_POLL: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Completed handshakes waiting for the server to take them.
const ACCEPT_BACKLOG: usize = 128;

/// The PEM files TLS is served from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates; when set, clients must present a certificate signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or holds no PEM item of the kind needed.
    #[error("cannot read {what} from {path}: {reason}")]
    File {
        /// Certificate, key or client CA.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

impl TlsFiles {
    /// Reads the files into a rustls server config that speaks HTTP/2 (gRPC).
    pub fn load(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let certs = certificates("certificate", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| file_error("private key", &self.key, e))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates("client CA", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("client CA", path, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // gRPC clients insist on ALPN h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// A TLS connection tonic can serve.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// TLS handshakes in progress at most.
const MAX_HANDSHAKES: usize = 256;

/// The server side of TLS: the config current now (reloaded as its files change) and the bound
/// on handshakes in progress, shared by the io threads, which each run the handshakes of the
/// connections they are given.
#[derive(Clone)]
pub struct Handshakes {
    current: Arc<RwLock<Arc<ServerConfig>>>,
    slots: Arc<Semaphore>,
}

impl Handshakes {
    /// Loads `files` (failing at once if they are not a valid configuration) and watches them
    /// until the returned guard drops; a later bad file is logged and the running config kept.
    pub fn start(files: TlsFiles) -> Result<(Self, AbortOnDrop), TlsError> {
        let current = Arc::new(RwLock::new(files.load()?));
        let reload = tokio::spawn(reload_on_change(files, current.clone()));
        let handshakes = Self {
            current,
            slots: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        };
        Ok((handshakes, AbortOnDrop(vec![reload])))
    }

    /// A place for one more handshake, to take before accepting the connection: a handshake
    /// costs CPU and memory before the peer has proved anything, so past [`MAX_HANDSHAKES`]
    /// further connections wait in the kernel's backlog.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the handshake semaphore is never closed")
    }

    /// Runs the handshakes of `connections` on the current runtime, each in its own task with
    /// the config current when it arrived, so a slow or silent client holds up no other, and
    /// yields the completed connections. The stream ends once `connections` has ended and the
    /// handshakes under way are done.
    pub fn complete<S>(
        &self,
        connections: S,
    ) -> impl Stream<Item = io::Result<Accepted<TlsConnection>>> + Send + 'static
    where
        S: Stream<Item = (TcpStream, OwnedSemaphorePermit, OwnedSemaphorePermit)> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let current = self.current.clone();
        let start = tokio::spawn(async move {
            let mut connections = std::pin::pin!(connections);
            while let Some((tcp, slot, place)) = connections.next().await {
                let acceptor = TlsAcceptor::from(current.read().expect("tls config").clone());
                let ready = tx.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let peer = tcp.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send(Accepted::new(TlsConnection(tls), place)).await;
                        }
                        Ok(Err(e)) => tracing::info!(?peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(?peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let guard = AbortOnDrop(vec![start]);
        futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|c| (Ok(c), (rx, guard)))
        })
    }
}

/// Stops the tasks it holds when dropped: the reload task with the server, the handshake
/// starter with its connection stream.
pub struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

async fn reload_on_change(files: TlsFiles, current: Arc<RwLock<Arc<ServerConfig>>>) {
    let mut last = files.modified();
    let mut tick = tokio::time::interval(RELOAD_POLL);
    loop {
        tick.tick().await;
        let now = files.modified();
        if now == last {
            continue;
        }
        last = now;
        match files.load() {
            Ok(config) => {
                *current.write().expect("tls config") = config;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the running certificate")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            cert: empty.clone(),
            key: dir.path().join("missing.pem"),
            client_ca: None,
        };
        let err = files.load().unwrap_err().to_string();
        assert!(
            err.contains("certificate") && err.contains("empty.pem"),
            "{err}"
        );
    }
}
