//! `Interrupt`: SIGINT (Ctrl-C) and SIGTERM for the commands that hold something until told to
//! stop (`lease keep-alive`, `lock`, `elect`, `service register`). It listens from the moment
//! it is made, so a signal that arrives between two waits is not lost (and never kills the
//! process before it could release what it holds).

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Interrupt {
    int: Option<Signal>,
    term: Option<Signal>,
}

impl Interrupt {
    /// Starts listening for SIGINT and SIGTERM.
    pub fn listen() -> Self {
        Self {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves when SIGINT or SIGTERM has arrived since [`Self::listen`] (or the last wait).
    /// Never resolves if neither could be listened for.
    pub async fn wait(&mut self) {
        async fn next(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = next(&mut self.int) => {}
            () = next(&mut self.term) => {}
        }
    }
}
