//! `LinkProxy`: a TCP forwarder on one directed peer link (node A's messages to node B), which
//! the nemesis can cut.
//!
//! A cut link behaves like a network partition, not like a crashed peer: bytes stop flowing
//! but connections are neither refused nor reset — open connections go silent and new ones are
//! accepted and then ignored — so RPCs time out the way they do when packets vanish. When the
//! link heals, the silenced connections are closed and the peer reconnects.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct LinkProxy {
    pub from: u64,
    pub to: u64,
    /// Where node `from` sends its messages for node `to`.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(from: u64, to: u64, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(forward(inbound, target, cut_rx.clone()));
            }
        });
        Ok(Self {
            from,
            to,
            addr,
            cut,
            task,
        })
    }

    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn heal(&self) {
        let _ = self.cut.send(false);
    }

    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(mut inbound: TcpStream, target: SocketAddr, mut cut: watch::Receiver<bool>) {
    if *cut.borrow() {
        // Accept, then say nothing until the link heals; then hang up.
        let _ = cut.wait_for(|c| !*c).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let was_cut = tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => false,
        _ = cut.wait_for(|c| *c) => true,
    };
    if was_cut {
        // Go silent, keeping both sockets open, until the link heals.
        let _ = cut.wait_for(|c| !*c).await;
    }
}
