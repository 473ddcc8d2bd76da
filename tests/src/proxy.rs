//! A TCP proxy that tests cut: it forwards connections to a target until
//! told to drop them all (a network blip, a load balancer restarting), and
//! can refuse new ones for a while (an outage). Real sockets on both sides.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

pub struct CutProxy {
    pub addr: SocketAddr,
    ctl: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

struct Control {
    /// Bumped by `cut`: every open connection ends.
    cuts: watch::Sender<u64>,
    /// New connections are closed at once while set.
    refusing: AtomicBool,
    /// Connections forwarded so far.
    forwarded: AtomicU64,
}

impl CutProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let ctl = Arc::new(Control {
            cuts: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
        });
        let task = tokio::spawn({
            let ctl = Arc::clone(&ctl);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if ctl.refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    ctl.forwarded.fetch_add(1, Ordering::SeqCst);
                    let mut cut = ctl.cuts.subscribe();
                    tokio::spawn(async move {
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.changed() => {}
                        }
                        // Both sockets close here: the peers see the
                        // connection drop mid-stream.
                    });
                }
            }
        });
        Self { addr, ctl, task }
    }

    /// Drops every open connection.
    pub fn cut(&self) {
        self.ctl.cuts.send_modify(|n| *n += 1);
    }

    /// While `on`, new connections are closed as soon as they are made.
    pub fn refuse(&self, on: bool) {
        self.ctl.refusing.store(on, Ordering::SeqCst);
    }

    /// Connections forwarded so far (the first one and every reconnect).
    pub fn forwarded(&self) -> u64 {
        self.ctl.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
