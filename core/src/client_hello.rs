//! A bounded, sans-IO reader of the first TLS ClientHello on a connection: enough of it to
//! tell mesh mTLS (our ALPN) from an application's own TLS, and to name the server it asks
//! for (SNI).
//!
//! It looks at one ClientHello at most, across as many TLS records as carry it, and never at
//! more than [`MAX_INPUT`] bytes. It borrows from the input when the ClientHello sits in one
//! record (nearly always) and otherwise reassembles it into a caller-owned scratch buffer
//! that never grows past [`MAX_CLIENT_HELLO`]. It does not verify anything cryptographic:
//! that is the TLS library's job once the connection is known to be ours.

use std::fmt;

/// The largest ClientHello handshake message accepted (its body, without the 4-byte
/// handshake header). Real ones are 200 bytes to 2 KiB; post-quantum key shares add about
/// 1.2 KiB.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// The most bytes [`parse`] ever needs to see: the ClientHello and the headers of the
/// records that carry it (records of at least 512 bytes each are assumed beyond the first;
/// a peer that fragments more finely is refused).
pub const MAX_INPUT: usize = MAX_CLIENT_HELLO + 4 + 5 * (1 + MAX_CLIENT_HELLO / 512);

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not TLS: the first byte is not a handshake record.
    NotTls,
    /// A TLS handshake record has begun but the ClientHello is not complete; read more (at
    /// least `need` more bytes).
    Incomplete { need: usize },
    /// A complete, well-formed ClientHello.
    Hello(ClientHello<'a>),
    /// It began like TLS but is not a ClientHello we can read.
    Invalid(HelloError),
}

/// Why bytes that began like TLS are not a readable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HelloError {
    /// The record's protocol version is not TLS (major version 3).
    RecordVersion,
    /// A record's length is zero or beyond what TLS allows (2^14 bytes).
    RecordLength,
    /// A record in the middle of the ClientHello is not a handshake record.
    Interleaved,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello is larger than [`MAX_CLIENT_HELLO`], or carried in records so small
    /// that it would take more than [`MAX_INPUT`] bytes.
    TooLarge,
    /// A length inside the ClientHello runs past its end, or a field is malformed.
    Malformed,
}

impl HelloError {
    pub fn as_str(self) -> &'static str {
        match self {
            HelloError::RecordVersion => "record version is not TLS",
            HelloError::RecordLength => "record length out of range",
            HelloError::Interleaved => "non-handshake record inside the ClientHello",
            HelloError::NotClientHello => "first handshake message is not a ClientHello",
            HelloError::TooLarge => "ClientHello too large",
            HelloError::Malformed => "malformed ClientHello",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HelloError {}

/// The parts of a ClientHello the proxy decides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientHello<'a> {
    /// The `host_name` of the server_name extension, when present and valid UTF-8.
    pub sni: Option<&'a str>,
    /// The ALPN extension's `protocol_name_list` body (validated), empty when absent.
    alpn: &'a [u8],
    /// Whether an ALPN extension was present at all.
    pub has_alpn: bool,
}

impl<'a> ClientHello<'a> {
    /// The ALPN protocols offered, in the client's order.
    pub fn alpn(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = self.alpn;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (name, tail) = tail.split_at_checked(usize::from(len))?;
            rest = tail;
            Some(name)
        })
    }

    /// Whether `protocol` is among the ALPN protocols offered.
    pub fn offers(&self, protocol: &[u8]) -> bool {
        self.alpn().any(|p| p == protocol)
    }
}

/// A cursor over a byte slice that fails instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(HelloError::Malformed)?;
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, HelloError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A field prefixed with a `width`-byte length.
    fn vec8(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Result<&'a [u8], HelloError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads the first ClientHello from the start of a connection's bytes.
///
/// `scratch` is used only when the ClientHello spans several records; it is cleared first
/// and never grows past [`MAX_CLIENT_HELLO`] bytes. Only the first [`MAX_INPUT`] bytes of
/// `input` are ever looked at.
pub fn parse<'a>(input: &'a [u8], scratch: &'a mut Vec<u8>) -> Parsed<'a> {
    match first_message(input, scratch) {
        Ok(Some(body)) => match client_hello(body) {
            Ok(h) => Parsed::Hello(h),
            Err(e) => Parsed::Invalid(e),
        },
        Ok(None) => Parsed::Incomplete {
            need: need_more(input),
        },
        Err(Error::NotTls) => Parsed::NotTls,
        Err(Error::Hello(e)) => Parsed::Invalid(e),
    }
}

enum Error {
    NotTls,
    Hello(HelloError),
}

impl From<HelloError> for Error {
    fn from(e: HelloError) -> Self {
        Error::Hello(e)
    }
}

/// How many more bytes the next step needs at least (a lower bound; 1 when unknown).
fn need_more(input: &[u8]) -> usize {
    if input.len() < 5 {
        return 5 - input.len();
    }
    let len = usize::from(u16::from_be_bytes([input[3], input[4]]));
    (5 + len).saturating_sub(input.len()).max(1)
}

/// The ClientHello's body (after the 4-byte handshake header), once every record carrying it
/// has arrived; `None` while incomplete.
fn first_message<'a>(input: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<Option<&'a [u8]>, Error> {
    let input = &input[..input.len().min(MAX_INPUT)];
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    if first != RECORD_HANDSHAKE {
        return Err(Error::NotTls);
    }
    // The first record: in the overwhelmingly common case it holds the whole message.
    let Some(header) = input.get(..5) else {
        return Ok(None);
    };
    check_record_header(header)?;
    let rec_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let Some(fragment) = input.get(5..5 + rec_len) else {
        // The record is incomplete; once it is, see whether it holds the whole message.
        let partial = &input[5..];
        if let Some(hs) = partial.get(..4) {
            check_handshake_header(hs)?;
        }
        return Ok(None);
    };
    let Some(hs) = fragment.get(..4) else {
        // A handshake header split across records: reassemble.
        return reassemble(input, scratch);
    };
    let msg_len = check_handshake_header(hs)?;
    if fragment.len() >= 4 + msg_len {
        return Ok(Some(&fragment[4..4 + msg_len]));
    }
    reassemble(input, scratch)
}

fn check_record_header(h: &[u8]) -> Result<(), HelloError> {
    if h[1] != 3 {
        return Err(HelloError::RecordVersion);
    }
    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
    if len == 0 || len > 1 << 14 {
        return Err(HelloError::RecordLength);
    }
    Ok(())
}

/// Checks a handshake header; returns the message's body length.
fn check_handshake_header(hs: &[u8]) -> Result<usize, HelloError> {
    if hs[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    if len > MAX_CLIENT_HELLO {
        return Err(HelloError::TooLarge);
    }
    Ok(len)
}

/// Gathers the handshake bytes of consecutive records into `scratch` until the ClientHello
/// is complete.
fn reassemble<'a>(input: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<Option<&'a [u8]>, Error> {
    scratch.clear();
    let mut rest = input;
    let mut want: Option<usize> = None;
    loop {
        if let Some(total) = want
            && scratch.len() >= total
        {
            return Ok(Some(&scratch[4..total]));
        }
        let Some(header) = rest.get(..5) else {
            if input.len() >= MAX_INPUT {
                return Err(HelloError::TooLarge.into());
            }
            return Ok(None);
        };
        if header[0] != RECORD_HANDSHAKE {
            return Err(HelloError::Interleaved.into());
        }
        check_record_header(header)?;
        let rec_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some(fragment) = rest.get(5..5 + rec_len) else {
            if input.len() >= MAX_INPUT {
                return Err(HelloError::TooLarge.into());
            }
            return Ok(None);
        };
        rest = &rest[5 + rec_len..];
        // Take only what the message still needs: a record may carry the next message too.
        let limit = want.unwrap_or(4 + MAX_CLIENT_HELLO);
        let room = limit.saturating_sub(scratch.len());
        scratch.extend_from_slice(&fragment[..fragment.len().min(room)]);
        if want.is_none() && scratch.len() >= 4 {
            want = Some(4 + check_handshake_header(&scratch[..4])?);
        }
    }
}

/// Reads a ClientHello body (RFC 8446 section 4.1.2; also TLS 1.0-1.2, which share it).
fn client_hello(body: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let mut r = Reader::new(body);
    let _legacy_version = r.u16()?;
    let _random = r.take(32)?;
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed);
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed);
    }
    let compression = r.vec8()?;
    if compression.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut hello = ClientHello::default();
    if r.is_empty() {
        // No extensions at all (legal before TLS 1.3): no SNI, no ALPN.
        return Ok(hello);
    }
    let mut exts = Reader::new(r.vec16()?);
    if !r.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut seen_sni = false;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                if seen_sni {
                    return Err(HelloError::Malformed);
                }
                seen_sni = true;
                hello.sni = server_name(data)?;
            }
            EXT_ALPN => {
                if hello.has_alpn {
                    return Err(HelloError::Malformed);
                }
                hello.has_alpn = true;
                hello.alpn = alpn_list(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The `host_name` entry of a server_name extension (RFC 6066 section 3).
fn server_name(data: &[u8]) -> Result<Option<&str>, HelloError> {
    let mut r = Reader::new(data);
    let mut list = Reader::new(r.vec16()?);
    if !r.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 && host.is_none() {
            if name.is_empty() {
                return Err(HelloError::Malformed);
            }
            host = std::str::from_utf8(name).ok();
        }
    }
    Ok(host)
}

/// The body of an ALPN extension's `protocol_name_list`, each name checked non-empty.
fn alpn_list(data: &[u8]) -> Result<&[u8], HelloError> {
    let mut r = Reader::new(data);
    let list = r.vec16()?;
    if !r.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed);
    }
    let mut names = Reader::new(list);
    while !names.is_empty() {
        if names.vec8()?.is_empty() {
            return Err(HelloError::Malformed);
        }
    }
    Ok(list)
}

#[cfg(test)]
mod tests;
