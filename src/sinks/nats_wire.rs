//! A publish-only core NATS connection of the bridge's own, used by the
//! core-NATS sink (JetStream stays on async-nats).
//!
//! Why not async-nats here: with the headers every message carries, its
//! publish alone costs 2.6 µs of CPU per message on this project's machine
//! (a `HeaderMap` of a HashMap, a Vec and a String per header, a copy of the
//! subject, and a channel send to its connection task per message), more
//! than the bridge's whole budget per event (BENCHMARKS.md). Here a lane's
//! batch is framed into one buffer (`HPUB` lines with the headers written
//! straight in) and written at once, followed by `PING`; the batch is
//! acknowledged by the server's `PONG`, which nats-server sends only after
//! it has handled everything the connection sent before the `PING`. That is
//! also the acknowledgement core NATS should have: a flush only says that
//! the kernel took the bytes.
//!
//! What it does: plain TCP or TLS (after the server's INFO, as nats-server
//! expects; a `tls://` URL, `tls.required` or the server's `tls_required`
//! turn it on), authentication by user and password (in the URL or the
//! configuration), token, nkey or a `.creds` file (the nonce signed with the
//! seed), the server's INFO updates (`max_payload`; lame-duck mode retires
//! the connection after its batch), server PINGs answered, and reconnects:
//! a connection that fails is dropped and the next batch opens another,
//! trying the configured servers in turn, paced by the lane's backoff.
//! Connections idle longer than a server would wait for a PONG are not
//! reused.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use base64::Engine as _;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::core::settings::Secret;

/// How a connection authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// An nkey seed: the server's nonce is signed with it.
    Nkey(Secret),
    /// A user JWT and the seed that signs the nonce, from a `.creds` file.
    Credentials {
        jwt: String,
        seed: Secret,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub servers: Vec<ServerAddr>,
    /// The connection's name as the server shows it.
    pub name: String,
    pub auth: Auth,
    /// Where `auth` came from: read again for each new connection.
    pub auth_files: AuthFiles,
    /// The client TLS configuration: used when a server URL says `tls://`,
    /// when `tls_required`, or when the server asks for TLS.
    pub tls: Arc<rustls::ClientConfig>,
    pub tls_required: bool,
    /// For connecting (TCP, TLS, the handshake) and for each batch.
    pub timeout: Duration,
}

/// The files the credentials were read from. Each new connection reads
/// them again, so a rotated password, token, nkey or `.creds` file is what
/// the next reconnect presents, with no restart; a file that cannot be read
/// then leaves the credential read at start-up in use, and says so.
#[derive(Debug, Clone, Default)]
pub struct AuthFiles {
    pub password: Option<PathBuf>,
    pub token: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
}

impl Options {
    /// The credentials to present now: `auth`, with what its file holds
    /// today.
    fn current_auth(&self) -> Auth {
        self.auth_files.current(&self.auth, &self.name)
    }
}

impl AuthFiles {
    /// `auth` (as read with the configuration) with what its file holds
    /// now; `auth` itself when there is no file or it cannot be read now,
    /// which is logged. For this writer and for async-nats's clients alike.
    pub fn current(&self, auth: &Auth, sink: &str) -> Auth {
        let reread = |file: &Option<PathBuf>, configured: &Secret| {
            crate::sinks::current_secret(configured, file.as_deref(), sink)
        };
        match auth {
            Auth::UserPassword { user, password } => Auth::UserPassword {
                user: user.clone(),
                password: reread(&self.password, password),
            },
            Auth::Token(token) => Auth::Token(reread(&self.token, token)),
            Auth::Nkey(seed) => Auth::Nkey(reread(&self.nkey, seed)),
            Auth::Credentials { .. } => match self.credentials.as_deref().map(read_credentials) {
                Some(Ok(current)) => current,
                Some(Err(e)) => {
                    tracing::warn!(sink, problem = %crate::telemetry::Chain(&e), "cannot read the credentials file again; presenting the one read at start-up");
                    auth.clone()
                }
                None => auth.clone(),
            },
            Auth::None => Auth::None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{server}")]
    Connect {
        server: String,
        #[source]
        source: Box<WireError>,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the server refused the connection: {0}")]
    Refused(String),
    #[error("the server answered -ERR {0}")]
    Server(String),
    #[error("the server sent what the protocol does not allow here: {0:?}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("no acknowledgement within the timeout")]
    Timeout,
}

/// What the server says in INFO that the bridge uses.
#[derive(Debug, Default, Deserialize)]
struct Info {
    #[serde(default)]
    max_payload: usize,
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    headers: bool,
    /// Lame-duck mode: the server is about to shut down.
    #[serde(default)]
    ldm: bool,
}

/// One line from the server.
#[derive(Debug, PartialEq)]
enum Op {
    Info(String),
    Ping,
    Pong,
    Ok,
    Err(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The longest line the server may send (an INFO with many cluster URLs).
const MAX_LINE: usize = 1 << 20;

/// A connection is not reused after this long idle: nats-server pings
/// every two minutes by default and closes a connection that misses two.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// Reads the server's lines from `io`, keeping what follows a line.
struct Lines {
    input: Vec<u8>,
}

impl Lines {
    async fn next(&mut self, io: &mut (impl AsyncRead + Unpin)) -> Result<Op, WireError> {
        loop {
            if let Some(end) = self.input.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.input[..end]).into_owned();
                self.input.drain(..end + 2);
                return parse(&line);
            }
            if self.input.len() > MAX_LINE {
                return Err(WireError::Protocol("a line longer than 1 MiB".into()));
            }
            let mut chunk = [0u8; 4096];
            let read = io.read(&mut chunk).await?;
            if read == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.input.extend_from_slice(&chunk[..read]);
        }
    }
}

fn parse(line: &str) -> Result<Op, WireError> {
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb.to_ascii_uppercase().as_str() {
        "INFO" => Ok(Op::Info(rest.to_owned())),
        "PING" => Ok(Op::Ping),
        "PONG" => Ok(Op::Pong),
        "+OK" => Ok(Op::Ok),
        "-ERR" => Ok(Op::Err(rest.trim().trim_matches('\'').to_owned())),
        _ => Err(WireError::Protocol(line.chars().take(80).collect())),
    }
}

/// One open, authenticated connection.
struct Connection {
    io: Box<dyn Io>,
    lines: Lines,
    max_payload: usize,
    lame_duck: bool,
    idle_since: Instant,
}

impl Connection {
    async fn open(options: &Options, server: &ServerAddr) -> Result<Connection, WireError> {
        let tcp = TcpStream::connect((server.host(), server.port())).await?;
        tcp.set_nodelay(true)?;
        let mut tcp: Box<dyn Io> = Box::new(tcp);
        let mut lines = Lines {
            input: Vec::with_capacity(4096),
        };
        let info = match lines.next(&mut tcp).await? {
            Op::Info(json) => info(&json)?,
            other => return Err(WireError::Protocol(format!("{other:?} before INFO"))),
        };
        let mut io = tcp;
        if server.tls_required() || options.tls_required || info.tls_required {
            if !lines.input.is_empty() {
                return Err(WireError::Protocol("data after INFO before TLS".into()));
            }
            let name = rustls::pki_types::ServerName::try_from(server.host().to_owned())
                .map_err(|e| WireError::Tls(e.to_string()))?;
            let connector = tokio_rustls::TlsConnector::from(options.tls.clone());
            io = Box::new(connector.connect(name, io).await?);
        }
        if !info.headers {
            return Err(WireError::Refused(
                "the server does not support headers (nats-server 2.2 or newer)".into(),
            ));
        }
        let connect = connect_json(
            options,
            &options.current_auth(),
            server,
            info.nonce.as_deref(),
        )?;
        io.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
            .await?;
        io.flush().await?;
        let mut connection = Connection {
            io,
            lines,
            max_payload: info.max_payload,
            lame_duck: info.ldm,
            idle_since: Instant::now(),
        };
        match connection.until_pong().await {
            Err(WireError::Server(message)) => Err(WireError::Refused(message)),
            other => other.map(|_| connection),
        }
    }

    /// Writes `frames` (whole messages and a final PING) and returns at the
    /// PONG that answers it, with the subjects the server refused to take
    /// a message for (the user may not publish there).
    async fn publish(&mut self, frames: &[u8]) -> Result<Vec<String>, WireError> {
        self.io.write_all(frames).await?;
        self.io.flush().await?;
        self.until_pong().await
    }

    async fn until_pong(&mut self) -> Result<Vec<String>, WireError> {
        let mut refused = Vec::new();
        loop {
            match self.lines.next(&mut self.io).await? {
                Op::Pong => return Ok(refused),
                Op::Ping => {
                    self.io.write_all(b"PONG\r\n").await?;
                    self.io.flush().await?;
                }
                Op::Info(json) => {
                    let info = info(&json)?;
                    if info.max_payload > 0 {
                        self.max_payload = info.max_payload;
                    }
                    self.lame_duck |= info.ldm;
                }
                Op::Ok => {}
                // The server refuses that one message and goes on with the
                // rest of the batch, on the same connection.
                Op::Err(message) => match denied_subject(&message) {
                    Some(subject) => refused.push(subject.to_owned()),
                    None => return Err(WireError::Server(message)),
                },
            }
        }
    }
}

/// The subject of a `Permissions Violation for Publish to "subject"` error.
fn denied_subject(message: &str) -> Option<&str> {
    let quoted = message.strip_prefix("Permissions Violation for Publish to ")?;
    Some(quoted.trim_matches('"'))
}

fn info(json: &str) -> Result<Info, WireError> {
    serde_json::from_str(json).map_err(|e| WireError::Protocol(format!("INFO: {e}")))
}

/// The CONNECT options: no verbose +OKs, headers on, and the credentials.
fn connect_json(
    options: &Options,
    auth: &Auth,
    server: &ServerAddr,
    nonce: Option<&str>,
) -> Result<String, WireError> {
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "headers": true,
        "no_responders": false,
        "echo": false,
        "name": options.name,
        "tls_required": false,
    });
    let sign = |seed: &Secret| -> Result<(String, String), WireError> {
        let pair = nkeys::KeyPair::from_seed(seed.expose())
            .map_err(|e| WireError::Refused(format!("the nkey seed is not valid: {e}")))?;
        let nonce = nonce.ok_or_else(|| {
            WireError::Refused("the server sent no nonce to sign for nkey authentication".into())
        })?;
        let signature = pair
            .sign(nonce.as_bytes())
            .map_err(|e| WireError::Refused(format!("cannot sign the nonce: {e}")))?;
        Ok((
            pair.public_key(),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature),
        ))
    };
    let url = server.clone().into_inner();
    match auth {
        Auth::None if !url.username().is_empty() => {
            connect["user"] = url.username().into();
            connect["pass"] = url.password().unwrap_or_default().into();
        }
        Auth::None => {}
        Auth::UserPassword { user, password } => {
            connect["user"] = user.as_str().into();
            connect["pass"] = password.expose().into();
        }
        Auth::Token(token) => connect["auth_token"] = token.expose().into(),
        Auth::Nkey(seed) => {
            let (public, signature) = sign(seed)?;
            connect["nkey"] = public.into();
            connect["sig"] = signature.into();
        }
        Auth::Credentials { jwt, seed } => {
            let (_, signature) = sign(seed)?;
            connect["jwt"] = jwt.as_str().into();
            connect["sig"] = signature.into();
        }
    }
    Ok(connect.to_string())
}

/// A `.creds` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no {block} block", path.display())]
    Missing {
        path: std::path::PathBuf,
        block: &'static str,
    },
    /// Its seed is not an nkey seed (the seed itself is not shown).
    #[error("{} holds a seed that is not a valid nkey seed", path.display())]
    Seed { path: std::path::PathBuf },
}

/// Reads a `.creds` file: the user JWT and the nkey seed, each between
/// its `-----BEGIN ...-----` and `------END ...------` lines.
pub fn read_credentials(path: &std::path::Path) -> Result<Auth, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let missing = |block| CredentialsError::Missing {
        path: path.to_owned(),
        block,
    };
    let block = |name: &str| {
        let mut lines = text
            .lines()
            .skip_while(|l| !l.contains(&format!("BEGIN {name}")));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .filter(|l| !l.starts_with("---"))
            .map(str::to_owned)
    };
    let jwt = block("NATS USER JWT").ok_or_else(|| missing("NATS USER JWT"))?;
    let seed = block("USER NKEY SEED").ok_or_else(|| missing("USER NKEY SEED"))?;
    // Checked now, so that a bad seed is a configuration error at start-up
    // and a file caught half-written at a reconnect falls back to the last.
    if nkeys::KeyPair::from_seed(&seed).is_err() {
        return Err(CredentialsError::Seed {
            path: path.to_owned(),
        });
    }
    Ok(Auth::Credentials {
        jwt,
        seed: Secret::new(seed),
    })
}

/// The sink's connections: one per lane publishing at a time, kept for
/// the next batch while they are healthy.
pub struct Wire {
    options: Options,
    idle: Mutex<Vec<Connection>>,
    /// Which server the next connection tries first.
    next_server: AtomicUsize,
    /// The server's `max_payload` as last announced (0 before the first INFO).
    max_payload: AtomicUsize,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire")
            .field("name", &self.options.name)
            .finish()
    }
}

impl Wire {
    /// Connects once, so that a wrong address or credential shows at start-up.
    pub async fn connect(options: Options) -> Result<Wire, WireError> {
        let wire = Wire {
            options,
            idle: Mutex::default(),
            next_server: AtomicUsize::new(0),
            max_payload: AtomicUsize::new(0),
        };
        let connection = wire.open().await?;
        wire.idle.lock().expect("never poisoned").push(connection);
        Ok(wire)
    }

    /// The largest message the server takes, as it last said.
    pub fn max_payload(&self) -> usize {
        self.max_payload.load(Ordering::Relaxed)
    }

    /// Writes `frames` (messages framed by `frame`, then `PING`) on one
    /// connection and returns once the server has handled all of them,
    /// with the subjects it refused a message for (all others it took).
    pub async fn publish(&self, frames: &[u8]) -> Result<Vec<String>, WireError> {
        let mut connection = match self.reusable() {
            Some(connection) => connection,
            None => self.open().await?,
        };
        let timeout = self.options.timeout;
        match tokio::time::timeout(timeout, connection.publish(frames)).await {
            Ok(Ok(refused)) => {
                self.max_payload
                    .store(connection.max_payload, Ordering::Relaxed);
                if connection.lame_duck {
                    tracing::info!(sink = %self.options.name, "NATS server in lame-duck mode; the next batch connects anew");
                } else {
                    connection.idle_since = Instant::now();
                    self.idle.lock().expect("never poisoned").push(connection);
                }
                Ok(refused)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(WireError::Timeout),
        }
    }

    /// Flushes nothing (every batch is written whole) and drops the
    /// connections.
    pub fn close(&self) {
        self.idle.lock().expect("never poisoned").clear();
    }

    fn reusable(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("never poisoned");
        while let Some(connection) = idle.pop() {
            if connection.idle_since.elapsed() < MAX_IDLE {
                return Some(connection);
            }
        }
        None
    }

    /// Opens a connection, trying each server once, starting after the one
    /// the last connection used.
    async fn open(&self) -> Result<Connection, WireError> {
        let servers = &self.options.servers;
        let start = self.next_server.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..servers.len() {
            let index = (start + attempt) % servers.len();
            let server = &servers[index];
            let opened = tokio::time::timeout(
                self.options.timeout,
                Connection::open(&self.options, server),
            )
            .await
            .unwrap_or(Err(WireError::Timeout));
            match opened {
                Ok(connection) => {
                    self.max_payload
                        .store(connection.max_payload, Ordering::Relaxed);
                    // Start from the server that answered next time too.
                    self.next_server.store(index, Ordering::Relaxed);
                    return Ok(connection);
                }
                Err(error) => {
                    last = Some(WireError::Connect {
                        server: format!("{}:{}", server.host(), server.port()),
                        source: Box::new(error),
                    })
                }
            }
        }
        self.next_server.store(start + 1, Ordering::Relaxed);
        Err(last.unwrap_or_else(|| WireError::Refused("no server URL".into())))
    }
}

/// Appends one message to `out` in the wire format: `HPUB subject
/// header-length total-length`, the headers, the payload; or, with no
/// headers, `PUB subject length` and the payload. `headers` is the header
/// block, from `NATS/1.0` to its empty line, or empty.
pub fn frame(out: &mut Vec<u8>, subject: &str, headers: &[u8], payload: &[u8]) {
    if headers.is_empty() {
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(subject.as_bytes());
    } else {
        out.extend_from_slice(b"HPUB ");
        out.extend_from_slice(subject.as_bytes());
        out.push(b' ');
        push_number(out, headers.len());
    }
    out.push(b' ');
    push_number(out, headers.len() + payload.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// What ends a batch: the server's PONG to it is the acknowledgement.
pub const PING: &[u8] = b"PING\r\n";

fn push_number(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A header block for `frame`: `NATS/1.0`, each `name: value`, an empty line.
pub fn header_block(out: &mut Vec<u8>, headers: impl FnOnce(&mut dyn FnMut(&str, &str))) {
    out.extend_from_slice(b"NATS/1.0\r\n");
    headers(&mut |name, value| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_framed_as_hpub_with_its_lengths() {
        let mut headers = Vec::new();
        header_block(&mut headers, |add| add("Nats-Msg-Id", "abc"));
        let mut out = Vec::new();
        frame(&mut out, "a.b", &headers, b"{}");
        assert_eq!(
            out,
            b"HPUB a.b 30 32\r\nNATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n{}\r\n"
        );
        out.clear();
        frame(&mut out, "a.b", b"", b"{}");
        assert_eq!(out, b"PUB a.b 2\r\n{}\r\n");
        let mut n = Vec::new();
        push_number(&mut n, 0);
        push_number(&mut n, 1234567);
        assert_eq!(n, b"01234567");
    }

    #[test]
    fn server_lines_are_parsed() {
        assert_eq!(parse("PING").unwrap(), Op::Ping);
        assert_eq!(parse("pong").unwrap(), Op::Pong);
        assert_eq!(parse("+OK").unwrap(), Op::Ok);
        assert_eq!(
            parse("-ERR 'Authorization Violation'").unwrap(),
            Op::Err("Authorization Violation".into())
        );
        assert_eq!(parse("INFO {}").unwrap(), Op::Info("{}".into()));
        assert!(parse("MSG a 1 2").is_err());
    }

    #[test]
    fn credentials_files_give_the_jwt_and_the_seed() {
        let user_seed = nkeys::KeyPair::new_user().seed().unwrap();
        let creds = |seed: &str| {
            format!(
                "-----BEGIN NATS USER JWT-----\neyJ0eXAi.payload.sig\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            )
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.creds");
        std::fs::write(&path, creds(&user_seed)).unwrap();
        match read_credentials(&path).unwrap() {
            Auth::Credentials { jwt, seed } => {
                assert_eq!(jwt, "eyJ0eXAi.payload.sig");
                assert_eq!(seed.expose(), user_seed);
            }
            other => panic!("{other:?}"),
        }
        // A seed cut short (a file caught half-written) is refused, and
        // not shown.
        std::fs::write(&path, creds(&user_seed[..20])).unwrap();
        let error = read_credentials(&path).unwrap_err().to_string();
        assert!(error.contains("not a valid nkey seed"), "{error}");
        assert!(!error.contains(&user_seed[..20]), "{error}");
        std::fs::write(&path, "nothing").unwrap();
        let error = read_credentials(&path).unwrap_err().to_string();
        assert!(
            error.contains("user.creds has no NATS USER JWT block"),
            "{error}"
        );
        let missing = dir.path().join("absent.creds");
        let error = read_credentials(&missing).unwrap_err();
        let chain = crate::telemetry::Chain(&error).to_string();
        assert!(
            chain.contains("absent.creds") && chain.contains("No such file"),
            "{chain}"
        );
    }
}
