//! Built-in backends, thread-per-core like the generator, so a run needs nothing else:
//! `tcp-echo` (echo, or fixed-size request/response), `http` (HTTP/1.1 keep-alive, fixed
//! body), `sink` (reads to EOF, answers with the byte count) and `udp-echo`.

use std::net::SocketAddr;
use std::thread;

use monoio::buf::IoBuf;
use monoio::buf::{IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::udp::UdpSocket;
use monoio::net::{TcpListener, TcpStream};

use crate::rt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Echoes bytes; with --request-size and --response-size, reads a request of one size and
    /// answers with the other.
    TcpEcho,
    /// HTTP/1.1 with keep-alive: any request gets 200 and a --response-size body.
    Http,
    /// Reads and counts; writes the count (u64, little endian) when the sender pauses for
    /// 100 ms and at EOF.
    Sink,
    /// Sends every datagram back to its sender.
    UdpEcho,
}

#[derive(Debug, Clone)]
pub struct ServeSpec {
    pub backend: Backend,
    pub listen: SocketAddr,
    pub threads: usize,
    pub request_size: Option<usize>,
    pub response_size: usize,
    pub driver: rt::Driver,
}

/// Serves until the process is killed.
pub fn serve(spec: &ServeSpec) -> anyhow::Result<()> {
    let threads = spec.threads.max(1);
    let mut handles = Vec::new();
    let mut bound = spec.listen;
    if spec.backend == Backend::UdpEcho {
        for t in 0..threads {
            let sock = udp_reuseport(bound)?;
            bound = sock.local_addr()?;
            let spec = spec.clone();
            handles.push(
                thread::Builder::new()
                    .name(format!("serve-{t}"))
                    .spawn(move || {
                        rt::block_on(spec.driver, |_| async move {
                            let sock = UdpSocket::from_std(sock)?;
                            udp_echo(sock).await
                        })
                    })?,
            );
        }
    } else {
        let listeners = rt::reuseport_listeners(spec.listen, threads)?;
        if let Some(l) = listeners.first() {
            bound = l.local_addr()?;
        }
        for (t, l) in listeners.into_iter().enumerate() {
            let spec = spec.clone();
            handles.push(
                thread::Builder::new()
                    .name(format!("serve-{t}"))
                    .spawn(move || {
                        rt::block_on(spec.driver, |epoll| async move {
                            l.set_nonblocking(epoll)?;
                            let l = TcpListener::from_std(l)?;
                            loop {
                                let Ok((s, _)) = l.accept().await else {
                                    continue;
                                };
                                let _ = s.set_nodelay(true);
                                let spec = spec.clone();
                                monoio::spawn(async move {
                                    let _ = match spec.backend {
                                        Backend::TcpEcho => {
                                            tcp_echo(s, spec.request_size, spec.response_size).await
                                        }
                                        Backend::Http => http(s, spec.response_size).await,
                                        Backend::Sink => sink(s).await,
                                        Backend::UdpEcho => Ok(()),
                                    };
                                });
                            }
                        })
                    })?,
            );
        }
    }
    // The bound address (port 0 picks one) on stdout, for whoever started us.
    println!("{bound}");
    eprintln!(
        "mesh-bench: serving {:?} on {bound} with {threads} thread(s)",
        spec.backend
    );
    for h in handles {
        match h.join() {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) | Ok(Err(e)) => return Err(e.into()),
            Err(_) => anyhow::bail!("a server thread panicked"),
        }
    }
    Ok(())
}

fn udp_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

async fn tcp_echo(
    mut s: TcpStream,
    request: Option<usize>,
    response: usize,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    match request {
        None => loop {
            let (r, b) = s.read(buf).await;
            buf = b;
            let n = r?;
            if n == 0 {
                return Ok(());
            }
            let (r, b) = s.write_all(buf.slice(0..n)).await;
            buf = b.into_inner();
            r?;
        },
        Some(req) => {
            let mut resp = vec![b'r'; response.max(1)];
            loop {
                let mut left = req.max(1);
                while left > 0 {
                    let want = left.min(buf.capacity());
                    let (r, b) = s.read(buf.slice_mut(0..want)).await;
                    buf = b.into_inner();
                    match r? {
                        0 => return Ok(()),
                        n => left -= n,
                    }
                }
                let (r, b) = s.write_all(resp).await;
                resp = b;
                r?;
            }
        }
    }
}

async fn http(mut s: TcpStream, body: usize) -> std::io::Result<()> {
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nServer: mesh-bench\r\nContent-Type: text/plain\r\nContent-Length: {body}\r\n\r\n"
    )
    .into_bytes();
    resp.extend(std::iter::repeat_n(b'b', body));
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        let cap = buf.capacity();
        if filled == cap {
            return Ok(()); // a head larger than 16 KiB: not a client of ours
        }
        let (r, b): (_, SliceMut<Vec<u8>>) = s.read(buf.slice_mut(filled..cap)).await;
        buf = b.into_inner();
        match r? {
            0 => return Ok(()),
            n => filled += n,
        }
        // Answer every complete request head in the buffer (GET has no body).
        while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let close = buf[..end]
                .windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
            let (r, b) = s.write_all(resp).await;
            resp = b;
            r?;
            buf.copy_within(end + 4..filled, 0);
            filled -= end + 4;
            if close {
                return Ok(());
            }
        }
    }
}

/// Counts what arrives; answers with the running total once the sender pauses (100 ms
/// without a byte) and again at EOF. The pause rule lets a total come back through proxies
/// that do not pass a half-close on (nginx's stream module before 1.27).
async fn sink(mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut total, mut reported) = (0u64, 0u64);
    loop {
        match monoio::time::timeout(std::time::Duration::from_millis(100), s.read(buf)).await {
            Ok((r, b)) => {
                buf = b;
                match r? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            Err(_) => {
                buf = vec![0u8; 256 * 1024];
                if total != reported {
                    let (r, _) = s.write_all(total.to_le_bytes().to_vec()).await;
                    r?;
                    reported = total;
                }
            }
        }
    }
    let (r, _) = s.write_all(total.to_le_bytes().to_vec()).await;
    r.map(drop)
}

async fn udp_echo(sock: UdpSocket) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (r, b) = sock.recv_from(buf).await;
        buf = b;
        let Ok((n, peer)) = r else { continue };
        let (r, b) = sock.send_to(buf.slice(0..n), peer).await;
        buf = b.into_inner();
        let _ = r;
    }
}
