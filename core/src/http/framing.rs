//! A second reading of an HTTP/1.x request stream's framing, as its bytes arrive, for what
//! the engine's parser forgives: a request with both `Content-Length` and
//! `Transfer-Encoding`. RFC 9112 §6.3 lets a server frame such a request by the chunked
//! encoding and close after it, which hyper does; but the length is the classic
//! request-smuggling lever (a front end and a back end that frame it differently), so the
//! proxy refuses it outright with a 400 and never forwards it. hyper drops the length before
//! the request reaches the proxy's code, so the request stream is read here too: each head
//! with `httparse`, each body skipped by its length or its chunks, and the heads that carry
//! both are remembered by their number on the connection.
//!
//! Anything this reading cannot follow (a head it cannot parse, an upgrade or `CONNECT`,
//! after which the bytes are a tunnel) turns it off: the engine's own parser, which refuses
//! malformed heads itself, is then the only one.

/// Headers read per head; more turns the reading off (the engine limits them itself).
const MAX_HEADERS: usize = 256;

/// A chunk-size line or a trailer line longer than this turns the reading off.
const MAX_LINE: usize = 4096;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `Content-Length` and `Transfer-Encoding` both present.
    LengthAndChunked,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::LengthAndChunked => "conflicting Content-Length and Transfer-Encoding",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests: a head (or the empty lines RFC 9112 §2.2 allows before it).
    Head,
    /// A body of known length: this many bytes left.
    Body(u64),
    /// A chunked body: the next chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many bytes left.
    ChunkData(u64),
    /// The CRLF after a chunk's data: this many of its bytes left.
    ChunkEnd(u8),
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
    /// Not following any more.
    Off,
}

/// One connection's request stream, read alongside the engine.
#[derive(Debug)]
pub struct Framing {
    state: State,
    /// A head or line split across reads, kept until it is whole.
    held: Vec<u8>,
    max_head: usize,
    /// Heads read so far.
    heads: u64,
    /// The first refused request: its number (from 0) and why.
    refused: Option<(u64, Refusal)>,
}

impl Framing {
    /// `max_head`: the engine's limit on a request head; a longer one turns this off.
    pub fn new(max_head: usize) -> Self {
        Self {
            state: State::Head,
            held: Vec::new(),
            max_head,
            heads: 0,
            refused: None,
        }
    }

    /// Whether request number `index` (from 0, in the order the engine reads them) is to be
    /// refused, and why.
    pub fn refused(&self, index: u64) -> Option<Refusal> {
        self.refused.filter(|(i, _)| *i == index).map(|(_, r)| r)
    }

    /// The first refused request, if any.
    pub fn first_refused(&self) -> Option<(u64, Refusal)> {
        self.refused
    }

    /// Whether it still follows the stream.
    pub fn following(&self) -> bool {
        self.state != State::Off
    }

    /// The next bytes of the stream, as the engine read them.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state == State::Off || bytes.is_empty() {
            return;
        }
        if self.held.is_empty() {
            self.run(bytes);
        } else {
            let mut joined = std::mem::take(&mut self.held);
            joined.extend_from_slice(bytes);
            self.run(&joined);
        }
    }

    fn off(&mut self) {
        self.state = State::Off;
        self.held = Vec::new();
    }

    /// Keeps `rest` (an unfinished head or line) for the next read, within `max`.
    fn hold(&mut self, rest: &[u8], max: usize) {
        if rest.len() > max {
            self.off();
        } else {
            self.held.extend_from_slice(rest);
        }
    }

    fn run(&mut self, input: &[u8]) {
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match self.state {
                State::Off => return,
                State::Head => {
                    // Empty lines before a request line are skipped (RFC 9112 §2.2).
                    if rest.starts_with(b"\r\n") {
                        at += 2;
                        continue;
                    }
                    if rest == b"\r" {
                        self.hold(rest, self.max_head);
                        return;
                    }
                    match self.head(rest) {
                        Some(n) => at += n,
                        None => {
                            if self.state == State::Head {
                                self.hold(rest, self.max_head);
                            }
                            return;
                        }
                    }
                }
                State::Body(left) | State::ChunkData(left) => {
                    let take = left.min(rest.len() as u64);
                    at += take as usize;
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkEnd(2),
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::ChunkEnd(left) => {
                    let want: &[u8] = if left == 2 { b"\r\n" } else { b"\n" };
                    let n = usize::from(left).min(rest.len());
                    if rest[..n] != want[..n] {
                        return self.off();
                    }
                    at += n;
                    // `n` is at most `left`, which is at most 2.
                    let left = left - u8::try_from(n).unwrap_or(left);
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left)
                    };
                }
                State::ChunkSize => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        at += n;
                        self.state = if size == 0 {
                            State::Trailers
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return self.hold(rest, MAX_LINE),
                    Err(_) => return self.off(),
                },
                State::Trailers => match rest.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        at += 2;
                        self.state = State::Head;
                    }
                    Some(end) => at += end + 2,
                    None => return self.hold(rest, MAX_LINE),
                },
            }
        }
    }

    /// Reads a head at the start of `buf`: its length, or `None` when it is not whole yet
    /// (or could not be read, which turns this off).
    fn head(&mut self, buf: &[u8]) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let n = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.off();
                return None;
            }
        };
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut transfer_encoding = false;
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let Some(len) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                else {
                    // The engine refuses a bad length itself.
                    self.off();
                    return None;
                };
                if length.is_some_and(|l| l != len) {
                    self.off();
                    return None;
                }
                length = Some(len);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = true;
                // The last coding decides (RFC 9112 §6.3).
                chunked = std::str::from_utf8(h.value).ok().is_some_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
                });
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let index = self.heads;
        self.heads += 1;
        if transfer_encoding && length.is_some() {
            self.refused
                .get_or_insert((index, Refusal::LengthAndChunked));
            // The engine closes the connection after its answer to this one.
            self.off();
            return Some(n);
        }
        self.state = if upgrade || (transfer_encoding && !chunked) {
            // A tunnel may follow, or the engine refuses the coding itself.
            State::Off
        } else if transfer_encoding {
            State::ChunkSize
        } else {
            match length {
                Some(0) | None => State::Head,
                Some(l) => State::Body(l),
            }
        };
        if self.state == State::Off {
            self.held = Vec::new();
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `stream` in pieces of every size from 1 to its length, and checks each way
    /// gives the same answer.
    fn read_in_pieces(stream: &[u8]) -> (Option<(u64, Refusal)>, bool, u64) {
        let mut answers = Vec::new();
        for size in 1..=stream.len() {
            let mut f = Framing::new(8192);
            for piece in stream.chunks(size) {
                f.feed(piece);
            }
            answers.push((f.first_refused(), f.following(), f.heads));
        }
        let first = answers[0];
        assert!(answers.iter().all(|a| *a == first), "{answers:?}");
        first
    }

    #[test]
    fn pipelined_requests_are_followed_through_their_bodies() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n\
\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(read_in_pieces(stream), (None, true, 4));
    }

    #[test]
    fn length_with_chunked_is_refused_by_its_number() {
        // The second request, either order of the two headers; what its length would frame
        // differently (a smuggled request) is never read as a head.
        for conflict in [
            &b"Content-Length: 40\r\nTransfer-Encoding: chunked"[..],
            b"Transfer-Encoding: chunked\r\nContent-Length: 40",
            b"transfer-encoding: gzip, chunked\r\ncontent-length: 0",
        ] {
            let mut stream =
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /te HTTP/1.1\r\nHost: x\r\n".to_vec();
            stream.extend_from_slice(conflict);
            stream.extend_from_slice(b"\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
            let (refused, following, heads) = read_in_pieces(&stream);
            assert_eq!(refused, Some((1, Refusal::LengthAndChunked)));
            assert!(!following);
            assert_eq!(heads, 2);
            let mut f = Framing::new(8192);
            f.feed(&stream);
            assert_eq!(f.refused(0), None);
            assert_eq!(f.refused(1), Some(Refusal::LengthAndChunked));
        }
    }

    #[test]
    fn a_header_name_inside_a_body_is_not_a_head() {
        let stream = b"POST /a HTTP/1.1\r\nContent-Length: 66\r\n\r\n\
GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n\
GET /b HTTP/1.1\r\n\r\n";
        assert_eq!(&stream[40 + 66..40 + 72], b"GET /b");
        assert_eq!(read_in_pieces(stream), (None, true, 2));
    }

    #[test]
    fn what_cannot_be_followed_turns_it_off() {
        for stream in [
            // An upgrade: a tunnel may follow.
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello"
                [..],
            b"CONNECT a:443 HTTP/1.1\r\n\r\nanything",
            // Heads the engine refuses itself.
            b"GET /x HTTP/1.1\r\nHost a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            // A bad chunk.
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let (refused, following, _) = read_in_pieces(stream);
            assert_eq!(refused, None, "{:?}", String::from_utf8_lossy(stream));
            assert!(!following, "{:?}", String::from_utf8_lossy(stream));
        }
        // A head longer than the limit.
        let mut f = Framing::new(64);
        f.feed(b"GET / HTTP/1.1\r\n");
        f.feed(&[b'a'; 100]);
        assert!(!f.following());
    }
}
