//! The HTTP edge, on its own thread, off the shard path: `/metrics`
//! (Prometheus), `/healthz` (the process is up) and `/readyz` (it accepts
//! clients; flips to 503 while draining).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use tiny_http::{Header, Response, Server};

use crate::metrics::Metrics;

/// State the HTTP thread reads.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// All counters.
    pub metrics: Metrics,
    /// False while starting and while draining.
    pub ready: Arc<AtomicBool>,
}

/// A running HTTP thread.
pub struct HttpServer {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    /// Binds `addr` and serves on a new thread.
    pub fn start(addr: SocketAddr, state: HttpState) -> std::io::Result<Self> {
        let server = Server::http(addr).map_err(std::io::Error::other)?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("tern-http".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    let path = req.url().split('?').next().unwrap_or("");
                    let resp = match path {
                        "/metrics" => Response::from_string(state.metrics.render()).with_header(
                            Header::from_bytes(
                                "Content-Type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .expect("static header"),
                        ),
                        "/healthz" => Response::from_string("ok\n"),
                        "/readyz" if state.ready.load(Ordering::Relaxed) => {
                            Response::from_string("ready\n")
                        }
                        "/readyz" => Response::from_string("not ready\n").with_status_code(503),
                        _ => Response::from_string("not found\n").with_status_code(404),
                    };
                    // A client that went away mid-response is not our problem.
                    let _ = req.respond(resp);
                }
            })?;
        Ok(Self {
            server,
            thread: Some(thread),
            addr,
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
