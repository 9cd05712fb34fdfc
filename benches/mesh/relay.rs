//! The floor: a plain TCP relay, run as a child process of the harness
//! (`mesh --plain-relay LISTEN CONNECT WORKERS`). Two of them in a row do what two proxies
//! must do at the least (accept, connect, move bytes both ways through user space) with no
//! TLS, no identity and no policy. Whatever they cost here, no proxy pair can cost less on
//! this machine; the report shows each target against it.
//!
//! Built like Warden's data plane, so that the floor is that design minus the security:
//! one single-threaded runtime per worker thread, an `SO_REUSEPORT` accept socket each,
//! TCP_NODELAY, 64 KiB copy buffers.

use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

const BUF: usize = 64 * 1024;

/// Runs the relay forever (the harness kills it). Panics on set-up errors, which the harness
/// reports from the process's log.
pub fn run(listen: SocketAddr, connect: SocketAddr, workers: usize) -> ! {
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket.set_reuseport(true).expect("SO_REUSEPORT");
            socket
                .bind(listen)
                .expect("bind the relay's listen address");
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("relay runtime");
                rt.block_on(async move {
                    let listener = socket.listen(1024).expect("listen");
                    loop {
                        let Ok((down, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(forward(down, connect));
                    }
                });
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(1)
}

async fn forward(mut down: TcpStream, connect: SocketAddr) {
    let Ok(mut up) = TcpStream::connect(connect).await else {
        return;
    };
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, BUF, BUF).await;
}
