//! Traffic of known shape, for ground-truth tests: every connection's bytes,
//! close and reset are decided here, and counted by the side that made them.
//!
//! The TCP exchange: the client writes `send` bytes and shuts its write side
//! (FIN); the server reads to EOF, writes its `send` bytes and closes (or
//! resets); the client reads to EOF. Both ends close gracefully, so every
//! byte is acknowledged before the sockets reach CLOSE.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One GET with `Connection: close`; (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(addr, path, &[])
}

/// One GET with extra headers and `Connection: close`; (status, body).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: pmoas-testbed\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("not an HTTP response: {head:?}")))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Ok((status, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// What a client run did, as the client saw it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientReport {
    pub connected: u64,
    pub failed: u64,
    pub resets: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// HTTP status -> count (http mode).
    pub statuses: Vec<(u16, u64)>,
    /// Each answered request's time, connect to last byte, in µs (http mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latencies_us: Vec<u64>,
    /// What TCP itself carried and had acknowledged, summed over the
    /// connections (TCP_INFO's bytes_acked at the end of each exchange,
    /// counting the SYN and FIN): about `bytes_sent` on a plain connection,
    /// a few bytes on one whose data went by socket redirect (tcp mode).
    #[serde(default)]
    pub tcp_bytes_acked: u64,
}

/// What a server run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerReport {
    pub accepted: u64,
    pub resets_sent: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// `count` exchanges with the server at `addr`, one connection after another.
pub fn tcp_client(addr: SocketAddr, count: u64, send: usize) -> ClientReport {
    tcp_client_held(addr, count, send, false)
}

/// [`tcp_client`]; with `hold`, all `count` connections are opened first and
/// held open together, then each makes its exchange: that many sockets
/// open at once on both ends (the server's wait in its accept queue).
pub fn tcp_client_held(addr: SocketAddr, count: u64, send: usize, hold: bool) -> ClientReport {
    let mut r = ClientReport::default();
    let payload = vec![b'c'; send];
    let mut open = Vec::new();
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) if hold => open.push(s),
            Ok(s) => exchange(s, &payload, &mut r),
            Err(_) => r.failed += 1,
        }
    }
    for s in open {
        exchange(s, &payload, &mut r);
    }
    r
}

/// Sends `payload`, shuts down writing, reads to EOF.
fn exchange(mut s: TcpStream, payload: &[u8], r: &mut ClientReport) {
    r.connected += 1;
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    if s.write_all(payload).is_ok() {
        r.bytes_sent += payload.len() as u64;
    }
    let _ = s.shutdown(Shutdown::Write);
    let mut buf = [0u8; 65536];
    let began = std::time::Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => r.bytes_received += n as u64,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                r.resets += 1;
                break;
            }
            // A socket in a sockops redirect map can wake a blocking read
            // once without data after its own shutdown(SHUT_WR) (the ACK of
            // its FIN): EAGAIN before the timeout. Read again, as every
            // event-loop program does (docs/sockops.md).
            Err(e) if e.kind() == ErrorKind::WouldBlock && began.elapsed() < IO_TIMEOUT => continue,
            Err(_) => break,
        }
    }
    r.tcp_bytes_acked += tcp_bytes_acked(&s);
}

/// TCP_INFO's bytes_acked of a connected socket (0 if unknown).
fn tcp_bytes_acked(s: &TcpStream) -> u64 {
    // SAFETY: an all-zero tcp_info is valid; getsockopt writes at most `len`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if rc == 0 { info.tcpi_bytes_acked } else { 0 }
    }
}

/// Serves `count` exchanges on `listener`: reads to EOF, answers `send`
/// bytes, then closes, or resets (SO_LINGER 0) when `reset`.
pub fn tcp_server(listener: TcpListener, count: u64, send: usize, reset: bool) -> ServerReport {
    let mut r = ServerReport::default();
    let payload = vec![b's'; send];
    while r.accepted < count {
        let Ok((mut s, _)) = listener.accept() else {
            continue;
        };
        r.accepted += 1;
        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => r.bytes_received += n as u64,
            }
        }
        if reset {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: valid socket fd and option struct.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            r.resets_sent += 1;
        } else if s.write_all(&payload).is_ok() {
            r.bytes_sent += send as u64;
        }
        drop(s);
    }
    r
}

/// `count` GETs of `path` with `Connection: close`, over `concurrency`
/// threads that start together.
pub fn http_load(addr: SocketAddr, path: &str, count: u64, concurrency: u64) -> ClientReport {
    http_load_staggered(addr, path, count, concurrency, Duration::ZERO)
}

/// [`http_load`] with thread `i` of `C` starting `i * stagger / C` late:
/// the same number in flight, arriving spread over `stagger` instead of in
/// bursts of `C` (a server whose work takes about `stagger` then keeps them
/// spread; started together, their answers come back together, round after
/// round, and the last of each burst waits for the others).
pub fn http_load_staggered(
    addr: SocketAddr,
    path: &str,
    count: u64,
    concurrency: u64,
    stagger: Duration,
) -> ClientReport {
    let concurrency = concurrency.max(1);
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let path = path.to_string();
            let n = count / concurrency + u64::from(i < count % concurrency);
            let late = stagger * i as u32 / concurrency as u32;
            std::thread::spawn(move || {
                std::thread::sleep(late);
                let mut r = ClientReport::default();
                for _ in 0..n {
                    let began = std::time::Instant::now();
                    match http_get(addr, &path) {
                        Ok((status, _)) => {
                            r.latencies_us.push(began.elapsed().as_micros() as u64);
                            r.connected += 1;
                            match r.statuses.iter_mut().find(|(s, _)| *s == status) {
                                Some((_, c)) => *c += 1,
                                None => r.statuses.push((status, 1)),
                            }
                        }
                        Err(_) => r.failed += 1,
                    }
                }
                r
            })
        })
        .collect();
    let mut total = ClientReport::default();
    for h in handles {
        let r = h.join().unwrap_or_default();
        total.connected += r.connected;
        total.failed += r.failed;
        total.latencies_us.extend(r.latencies_us);
        for (s, c) in r.statuses {
            match total.statuses.iter_mut().find(|(t, _)| *t == s) {
                Some((_, n)) => *n += c,
                None => total.statuses.push((s, c)),
            }
        }
    }
    total.statuses.sort();
    total
}

/// The sizes of the testbed's `/files/<size>` bodies (nginx static files,
/// with a Content-Length): below, at and above the sizes a socket hands
/// over in one message (64 KiB).
pub const FILE_SIZES: &[usize] = &[64, 4096, 65536, 300_000, 1 << 20];

/// The body of `/files/<size>`: bytes that differ by position and size, so
/// a body reordered, cut or mixed with another is never taken for right.
pub fn file_body(size: usize) -> Vec<u8> {
    (0..size).map(|i| ((i / 7 + i * 31 + size) % 251) as u8).collect()
}

/// What a [`fetch`] run saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FetchReport {
    /// Responses whose body was exactly [`file_body`] of its size.
    pub ok: u64,
    /// Responses with another status, length or content.
    pub wrong: u64,
    /// Requests without a response (connection refused, reset, closed, timed out).
    pub failed: u64,
    pub connections: u64,
    pub body_bytes: u64,
    /// The first few problems, for the test's message.
    pub problems: Vec<String>,
}

impl FetchReport {
    fn add(&mut self, o: FetchReport) {
        self.ok += o.ok;
        self.wrong += o.wrong;
        self.failed += o.failed;
        self.connections += o.connections;
        self.body_bytes += o.body_bytes;
        self.problems.extend(o.problems.into_iter().take(5usize.saturating_sub(self.problems.len())));
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 5 {
            self.problems.push(what);
        }
    }
}

/// `count` keep-alive GETs of `/files/<size>` over `concurrency`
/// connections (each cycling through `sizes`), every body compared byte for
/// byte with [`file_body`]. A connection that fails is replaced.
pub fn fetch(addr: SocketAddr, sizes: &[usize], count: u64, concurrency: u64) -> FetchReport {
    let concurrency = concurrency.max(1);
    let handles: Vec<_> = (0..concurrency)
        .map(|i| {
            let sizes = sizes.to_vec();
            let n = count / concurrency + u64::from(i < count % concurrency);
            std::thread::spawn(move || {
                let mut r = FetchReport::default();
                let bodies: Vec<Vec<u8>> = sizes.iter().map(|s| file_body(*s)).collect();
                let mut conn: Option<std::io::BufReader<TcpStream>> = None;
                for k in 0..n {
                    let which = (k as usize + i as usize) % sizes.len();
                    if conn.is_none() {
                        match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
                            Ok(s) => {
                                let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                                r.connections += 1;
                                conn = Some(std::io::BufReader::new(s));
                            }
                            Err(e) => {
                                r.failed += 1;
                                r.problem(format!("connect: {e}"));
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    match get_file(c, sizes[which]) {
                        Ok((200, body)) if body == bodies[which] => {
                            r.ok += 1;
                            r.body_bytes += body.len() as u64;
                        }
                        Ok((status, body)) => {
                            r.wrong += 1;
                            r.problem(format!("/files/{}: status {status}, {} bytes", sizes[which], body.len()));
                        }
                        Err(e) => {
                            r.failed += 1;
                            r.problem(format!("/files/{}: {e}", sizes[which]));
                            conn = None;
                        }
                    }
                }
                r
            })
        })
        .collect();
    let mut total = FetchReport::default();
    for h in handles {
        total.add(h.join().unwrap_or_default());
    }
    total
}

/// One keep-alive GET of `/files/<size>`: (status, body by Content-Length).
fn get_file(c: &mut std::io::BufReader<TcpStream>, size: usize) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::BufRead;
    let req = format!("GET /files/{size} HTTP/1.1\r\nHost: testbed\r\n\r\n");
    c.get_mut().write_all(req.as_bytes())?;
    let bad = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_string());
    let mut status = 0u16;
    let mut length: Option<usize> = None;
    loop {
        let mut line = String::new();
        if c.read_line(&mut line)? == 0 {
            return Err(bad("connection closed before the response"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status line"))?;
        } else if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok();
        }
    }
    let length = length.ok_or_else(|| bad("no Content-Length"))?;
    let mut body = vec![0u8; length];
    c.read_exact(&mut body)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_of_known_sizes_over_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || tcp_server(l, 3, 700, false));
        let c = tcp_client(addr, 3, 300);
        let s = server.join().unwrap();
        assert_eq!((c.connected, c.bytes_sent, c.bytes_received, c.resets), (3, 900, 2100, 0));
        assert_eq!((s.accepted, s.bytes_received, s.bytes_sent), (3, 900, 2100));
    }

    #[test]
    fn resets_are_seen_by_the_client() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || tcp_server(l, 4, 0, true));
        let c = tcp_client(addr, 4, 10);
        let s = server.join().unwrap();
        assert_eq!((c.connected, c.resets), (4, 4));
        assert_eq!(s.resets_sent, 4);
    }

    #[test]
    fn closed_port_fails() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = tcp_client(addr, 2, 1);
        assert_eq!((c.connected, c.failed), (0, 2));
    }

    #[test]
    fn dechunking() {
        assert_eq!(dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
