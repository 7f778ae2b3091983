//! The byte stream under the frames: plain TCP or TLS over TCP.
//!
//! Why a reader and a writer over one TLS connection: the session reads on
//! one thread and writes on another, and neither may wait for the other (two
//! nodes both writing a large backlog would deadlock if a blocked write held
//! up reading). The rustls connection sits behind a mutex that is only held
//! to encrypt or decrypt bytes already in memory, never across a socket
//! call. Only the writer takes bytes out of rustls for the wire, so records
//! leave in order; anything the reader makes rustls queue (an alert, a key
//! update reply) goes out with the writer's next write (at least one ping a
//! second).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustls::{ClientConnection, Connection, ServerConnection};

use super::tls::TlsSettings;
use super::Direction;

type Shared = Arc<Mutex<Connection>>;

fn lock(c: &Shared) -> MutexGuard<'_, Connection> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// An established link, before it is split for the session.
pub struct Link {
    sock: TcpStream,
    tls: Option<Shared>,
}

impl Link {
    /// A plain TCP link.
    pub fn plain(sock: TcpStream) -> Link {
        Link { sock, tls: None }
    }

    /// Run the TLS handshake on `sock`, all of it before `deadline` (a peer
    /// that trickles bytes is cut off). The node that dialed is the TLS
    /// client.
    pub fn tls(
        sock: TcpStream,
        settings: &TlsSettings,
        dir: Direction,
        deadline: Instant,
    ) -> io::Result<Link> {
        let mut conn: Connection = match dir {
            Direction::Dialed => {
                ClientConnection::new(settings.client.clone(), settings.server_name.clone())
                    .map_err(tls_error)?
                    .into()
            }
            Direction::Accepted => ServerConnection::new(settings.server.clone())
                .map_err(tls_error)?
                .into(),
        };
        let mut io = DeadlineIo {
            sock: &sock,
            deadline,
        };
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut io)?;
        }
        // The writer drains rustls after every write: no limit needed, and
        // a limit would make a large frame fail half-written.
        conn.set_buffer_limit(None);
        Ok(Link {
            sock,
            tls: Some(Arc::new(Mutex::new(conn))),
        })
    }

    /// The socket (for timeouts and shutdown).
    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Is the link encrypted?
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A reader and a writer over this link, for two threads.
    pub fn split(&self) -> io::Result<(LinkReader, LinkWriter)> {
        let reader = LinkReader {
            sock: self.sock.try_clone()?,
            tls: self.tls.clone(),
            raw: vec![0; if self.tls.is_some() { 64 * 1024 } else { 0 }],
            plain: Vec::new(),
            pos: 0,
            eof: false,
            deadline: None,
        };
        let writer = LinkWriter {
            sock: self.sock.try_clone()?,
            tls: self.tls.clone(),
            out: Vec::new(),
        };
        Ok((reader, writer))
    }
}

/// The socket with an absolute deadline on every read and write.
struct DeadlineIo<'a> {
    sock: &'a TcpStream,
    deadline: Instant,
}

fn time_left(deadline: Instant) -> io::Result<std::time::Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "handshake deadline passed",
        ));
    }
    Ok(left)
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock
            .set_read_timeout(Some(time_left(self.deadline)?))?;
        let mut s = self.sock;
        s.read(buf)
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock
            .set_write_timeout(Some(time_left(self.deadline)?))?;
        let mut s = self.sock;
        s.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receiving half: plaintext frames' bytes.
pub struct LinkReader {
    sock: TcpStream,
    tls: Option<Shared>,
    /// Ciphertext read from the socket (TLS only).
    raw: Vec<u8>,
    /// Decrypted bytes not yet handed out, from `pos`.
    plain: Vec<u8>,
    pos: usize,
    eof: bool,
    deadline: Option<Instant>,
}

impl LinkReader {
    /// Every read must finish before `deadline` (the handshake); `None`
    /// leaves the socket's own read timeout in charge.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Wait for the first byte without consuming it (plain links only):
    /// lets the handshake tell a TLS peer from a garbled one.
    pub fn peek_first_byte(&mut self) -> io::Result<Option<u8>> {
        if self.tls.is_some() {
            return Ok(None);
        }
        self.apply_deadline()?;
        let mut b = [0u8; 1];
        match self.sock.peek(&mut b)? {
            0 => Ok(None),
            _ => Ok(Some(b[0])),
        }
    }

    fn apply_deadline(&self) -> io::Result<()> {
        if let Some(d) = self.deadline {
            self.sock.set_read_timeout(Some(time_left(d)?))?;
        }
        Ok(())
    }

    /// Read ciphertext once and decrypt all of it into `plain`.
    fn fill(&mut self, conn: &Shared) -> io::Result<()> {
        self.apply_deadline()?;
        let n = (&self.sock).read(&mut self.raw)?;
        self.plain.clear();
        self.pos = 0;
        let mut c = lock(conn);
        if n == 0 {
            self.eof = true;
        }
        let mut slice = &self.raw[..n];
        loop {
            // Drain decrypted bytes first: rustls refuses more ciphertext
            // while its plaintext buffer is full.
            match c.reader().read_to_end(&mut self.plain) {
                Ok(_) => self.eof = true, // close_notify: clean end
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => self.eof = true,
                Err(e) => return Err(e),
            }
            if slice.is_empty() {
                break;
            }
            if c.read_tls(&mut slice)? == 0 {
                break;
            }
            c.process_new_packets().map_err(tls_error)?;
        }
        Ok(())
    }
}

impl Read for LinkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(conn) = self.tls.clone() else {
            self.apply_deadline()?;
            return (&self.sock).read(buf);
        };
        loop {
            if self.pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.pos);
                buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.eof {
                return Ok(0);
            }
            self.fill(&conn)?;
        }
    }
}

/// The sending half.
pub struct LinkWriter {
    sock: TcpStream,
    tls: Option<Shared>,
    /// Ciphertext to send (TLS only), reused between writes.
    out: Vec<u8>,
}

impl Write for LinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(conn) = self.tls.as_ref() else {
            return (&self.sock).write(buf);
        };
        self.out.clear();
        {
            let mut c = lock(conn);
            c.writer().write_all(buf)?;
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
        }
        (&self.sock).write_all(&self.out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
