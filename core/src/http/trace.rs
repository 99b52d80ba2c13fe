//! W3C Trace Context (`traceparent`, `tracestate`): what a request arrives with, whether its
//! span is sampled (parent-based, then a ratio for new traces), and what goes upstream.
//! Pure: the randomness comes in as arguments.

/// Sampling and export settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracingPolicy {
    /// New traces sampled, in millionths (0: none, 1_000_000: all). A request whose
    /// `traceparent` says sampled (or not) is decided by it.
    pub sample_ppm: u32,
    /// The OTLP/gRPC collector; `None`: nothing is exported (propagation still happens).
    pub otlp: Option<std::net::SocketAddr>,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

impl Default for TracingPolicy {
    fn default() -> Self {
        Self {
            sample_ppm: 10_000,
            otlp: None,
            service_name: "ringmesh".into(),
        }
    }
}

/// A valid `traceparent` (version 00 layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` value; `None` for anything the spec says to ignore (bad length
/// or hex, all-zero IDs, version `ff`, a version-00 header with more after it).
pub fn parse(value: &str) -> Option<TraceParent> {
    let v = value.trim().as_bytes();
    if v.len() < 55 {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    // Version 00 is exactly 55 bytes; a later version may append fields after a '-'.
    if (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        // Upper case is not allowed by the spec.
        _ => None,
    };
    Some(d(two[0])? << 4 | d(two[1])?)
}

/// The proxy's span for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with one.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

impl SpanContext {
    /// The span for a request that arrived with `incoming` (a parsed `traceparent`):
    /// a child of it, sampled as it says; or a new trace, sampled when `roll` (uniform in
    /// `0..1_000_000`) falls under the ratio. `new_trace` and `new_span` are fresh random IDs.
    pub fn start(
        incoming: Option<TraceParent>,
        policy: &TracingPolicy,
        roll: u32,
        new_trace: [u8; 16],
        new_span: [u8; 8],
    ) -> Self {
        let span_id = if new_span == [0; 8] { [1; 8] } else { new_span };
        match incoming {
            Some(p) => Self {
                trace_id: p.trace_id,
                span_id,
                parent_id: Some(p.parent_id),
                sampled: p.sampled,
            },
            None => Self {
                trace_id: if new_trace == [0; 16] {
                    [1; 16]
                } else {
                    new_trace
                },
                span_id,
                parent_id: None,
                sampled: roll < policy.sample_ppm,
            },
        }
    }

    /// The `traceparent` that goes upstream: this span as the parent.
    pub fn header(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&self.trace_id, &mut s);
        s.push('-');
        push_hex(&self.span_id, &mut s);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        push_hex(&self.trace_id, &mut s);
        s
    }
}

fn push_hex(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

/// Parses `sample_ratio` as given in the config (0 to 1) into millionths.
pub fn ratio_ppm(ratio: f64) -> Option<u32> {
    if !(0.0..=1.0).contains(&ratio) || ratio.is_nan() {
        return None;
    }
    // In range by the check above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((ratio * 1_000_000.0).round() as u32)
}
