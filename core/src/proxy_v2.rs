//! A sans-IO codec for the PROXY protocol, version 2 (haproxy's `proxy-protocol.txt`,
//! section 2.2), as the UDP relay uses it: the eBPF programs put a header carrying the
//! original source and destination after the UDP header of each intercepted datagram, the
//! proxy strips it with [`parse`], and the proxy puts one in front of each reply with
//! [`write`] for the eBPF to strip again.
//!
//! This is our own code rather than the `ppp` crate because the relay needs things a
//! general-purpose implementation does not promise together: a parse of one datagram that
//! borrows only and never allocates (the header and the payload are subslices of the
//! input), a build into the caller's fixed buffer, a typed reason for every refusal
//! ([`Malformed`], a closed set of metric label values), and nothing beyond the subset we
//! carry: TCP and UDP over IPv4 and IPv6, the UNSPEC family, and the LOCAL command.
//!
//! Choices where the specification leaves room, all on the side of refusing:
//! - AF_UNIX addresses are refused ([`Malformed::Family`]): nothing in the mesh sends them.
//! - An INET or INET6 family with the UNSPEC protocol nibble is refused
//!   ([`Malformed::Family`]): the relay must know whether the original flow was a stream or
//!   datagrams. The UNSPEC family must come with the UNSPEC protocol (byte `0x00`).
//! - LOCAL and PROXY-with-UNSPEC carry no addresses we can read, so their whole block (the
//!   family byte of a LOCAL header included, as the specification says) is skipped unread:
//!   no addresses, no TLVs. Its length must still lie within the datagram and
//!   [`MAX_HEADER`].
//! - TLVs are checked only for framing (they must exactly tile what follows the addresses);
//!   their contents, a CRC32C included, are not interpreted.
//! - IPv6 flow info and scope IDs are not carried by the protocol: [`write`] drops them and
//!   [`parse`] yields zeros. IPv4-mapped IPv6 addresses are returned as they came, not
//!   unmapped ([`crate::addr::canonical`] does that).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12 bytes every version 2 header begins with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The length of a header with IPv4 addresses and no TLVs: 16 fixed bytes and 12 of
/// addresses and ports.
pub const V4_LEN: usize = FIXED_LEN + V4_ADDRS;

/// The length of a header with IPv6 addresses and no TLVs: 16 fixed bytes and 36 of
/// addresses and ports.
pub const V6_LEN: usize = FIXED_LEN + V6_ADDRS;

/// The largest header accepted: the 16 fixed bytes and at most 216 bytes of addresses and
/// TLVs. 216 is the specification's largest address block (two 108-byte AF_UNIX paths), so
/// this is the size of the fixed `proxy_hdr_v2` union C senders (haproxy, our eBPF) build
/// into, and a header always fits a stack buffer of this size. It leaves 204 bytes of TLVs
/// after IPv4 addresses and 180 after IPv6; our own senders send none. A larger declared
/// length is [`Malformed::Length`], which bounds the work done per datagram.
pub const MAX_HEADER: usize = FIXED_LEN + 216;

const FIXED_LEN: usize = 16;
const V4_ADDRS: usize = 4 + 4 + 2 + 2;
const V6_ADDRS: usize = 16 + 16 + 2 + 2;
const VERSION: u8 = 2;
const CMD_LOCAL: u8 = 0;
const CMD_PROXY: u8 = 1;
const FAM_UNSPEC: u8 = 0;
const FAM_INET: u8 = 1;
const FAM_INET6: u8 = 2;
const PROTO_UNSPEC: u8 = 0;
const PROTO_STREAM: u8 = 1;
const PROTO_DGRAM: u8 = 2;
const TLV_HEADER: usize = 3;

/// The header's command (low nibble of byte 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Sent by the proxying side on its own behalf (a health check): no addresses; the
    /// receiver uses the real endpoints.
    Local,
    /// On behalf of another endpoint, whose addresses the header carries.
    Proxy,
}

/// The original flow's transport (low nibble of byte 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `SOCK_STREAM`: TCP.
    Stream,
    /// `SOCK_DGRAM`: UDP.
    Datagram,
}

/// A parsed header, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub command: Command,
    /// None for LOCAL, or for the UNSPEC family (AF_UNSPEC): no addresses.
    pub addrs: Option<Addrs>,
    /// The TLVs after the addresses, their framing validated; empty when there are no
    /// addresses.
    pub tlvs: Tlvs<'a>,
}

/// The original endpoints of a proxied flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    pub transport: Transport,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// The TLV vectors of a header: a view over bytes [`parse`] has checked to be a whole
/// number of well-framed TLVs. Iterate it for each [`Tlv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tlvs<'a> {
    bytes: &'a [u8],
}

impl Tlvs<'static> {
    /// No TLVs.
    pub const EMPTY: Tlvs<'static> = Tlvs { bytes: &[] };
}

impl<'a> Tlvs<'a> {
    /// Whether there are no TLVs.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw TLV bytes, as they appeared in the header.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The TLVs in header order.
    pub fn iter(&self) -> TlvIter<'a> {
        TlvIter { rest: self.bytes }
    }

    /// The value of the first TLV of type `kind`, if any.
    pub fn find(&self, kind: u8) -> Option<&'a [u8]> {
        self.iter().find(|t| t.kind == kind).map(|t| t.value)
    }
}

impl<'a> IntoIterator for Tlvs<'a> {
    type Item = Tlv<'a>;
    type IntoIter = TlvIter<'a>;
    fn into_iter(self) -> TlvIter<'a> {
        self.iter()
    }
}

/// One type-length-value vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    /// The type byte (`PP2_TYPE_*`).
    pub kind: u8,
    pub value: &'a [u8],
}

/// Iterator over [`Tlvs`].
#[derive(Debug, Clone)]
pub struct TlvIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for TlvIter<'a> {
    type Item = Tlv<'a>;
    fn next(&mut self) -> Option<Tlv<'a>> {
        let (tlv, rest) = split_tlv(self.rest)?;
        self.rest = rest;
        Some(tlv)
    }
}

/// The first TLV of `bytes` and what follows it, or None when `bytes` is empty or does not
/// begin with a whole TLV.
fn split_tlv(bytes: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&[kind, l0, l1], rest) = bytes.split_first_chunk::<TLV_HEADER>()?;
    let (value, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes([l0, l1])))?;
    Some((Tlv { kind, value }, rest))
}

/// Why a header was refused. Each reason is a metric label value ([`Malformed::as_str`]);
/// [`Malformed::ALL`] lists them so every series can be registered up front.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Malformed {
    /// Shorter than the 16-byte fixed part.
    #[error("PROXY v2 header shorter than its 16-byte fixed part")]
    Short,
    /// The first 12 bytes are not [`SIGNATURE`].
    #[error("no PROXY v2 signature")]
    Signature,
    /// The version nibble is not 2.
    #[error("PROXY protocol version is not 2")]
    Version,
    /// The command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("unknown PROXY v2 command")]
    Command,
    /// An unknown family or protocol nibble, AF_UNIX (which we do not carry), an address
    /// family without a transport, or the UNSPEC family with one.
    #[error("unsupported PROXY v2 address family or protocol")]
    Family,
    /// The declared length runs past the datagram, is shorter than the family's addresses,
    /// or is over [`MAX_HEADER`].
    #[error("PROXY v2 header length out of range")]
    Length,
    /// A TLV overruns the header's declared length.
    #[error("PROXY v2 TLV overruns the header")]
    Tlv,
}

impl Malformed {
    /// Every reason, in declaration order.
    pub const ALL: [Malformed; 7] = [
        Malformed::Short,
        Malformed::Signature,
        Malformed::Version,
        Malformed::Command,
        Malformed::Family,
        Malformed::Length,
        Malformed::Tlv,
    ];

    /// A stable snake_case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Signature => "signature",
            Malformed::Version => "version",
            Malformed::Command => "command",
            Malformed::Family => "family",
            Malformed::Length => "length",
            Malformed::Tlv => "tlv",
        }
    }
}

/// `out` cannot hold the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer of {have} bytes too short for a {need}-byte PROXY v2 header")]
pub struct BufferTooShort {
    /// Bytes the header needs.
    pub need: usize,
    /// Bytes `out` had.
    pub have: usize,
}

/// The address block layout of one family.
#[derive(Clone, Copy)]
enum Family {
    Inet,
    Inet6,
}

/// Parses a header at the start of `datagram`; returns the header and the payload that
/// follows it (a subslice of `datagram`, possibly empty).
pub fn parse(datagram: &[u8]) -> Result<(Header<'_>, &[u8]), Malformed> {
    let (fixed, rest) = datagram
        .split_first_chunk::<FIXED_LEN>()
        .ok_or(Malformed::Short)?;
    let [signature @ .., ver_cmd, fam_proto, l0, l1] = *fixed;
    if signature != SIGNATURE {
        return Err(Malformed::Signature);
    }
    if ver_cmd >> 4 != VERSION {
        return Err(Malformed::Version);
    }
    let command = match ver_cmd & 0x0f {
        CMD_LOCAL => Command::Local,
        CMD_PROXY => Command::Proxy,
        _ => return Err(Malformed::Command),
    };
    // The family byte means nothing under LOCAL, so it is only decoded for PROXY.
    let family = match command {
        Command::Local => None,
        Command::Proxy => family(fam_proto)?,
    };
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    if len > MAX_HEADER - FIXED_LEN {
        return Err(Malformed::Length);
    }
    let (block, payload) = rest.split_at_checked(len).ok_or(Malformed::Length)?;
    let Some((family, transport)) = family else {
        let header = Header {
            command,
            addrs: None,
            tlvs: Tlvs::EMPTY,
        };
        return Ok((header, payload));
    };
    let (source, destination, tlvs) = match family {
        Family::Inet => inet(block),
        Family::Inet6 => inet6(block),
    }
    .ok_or(Malformed::Length)?;
    let mut rest = tlvs;
    while !rest.is_empty() {
        let (_, tail) = split_tlv(rest).ok_or(Malformed::Tlv)?;
        rest = tail;
    }
    let header = Header {
        command,
        addrs: Some(Addrs {
            transport,
            source,
            destination,
        }),
        tlvs: Tlvs { bytes: tlvs },
    };
    Ok((header, payload))
}

/// Decodes a PROXY header's family and protocol byte: None for UNSPEC (no addresses).
fn family(fam_proto: u8) -> Result<Option<(Family, Transport)>, Malformed> {
    let transport = match fam_proto & 0x0f {
        PROTO_UNSPEC => None,
        PROTO_STREAM => Some(Transport::Stream),
        PROTO_DGRAM => Some(Transport::Datagram),
        _ => return Err(Malformed::Family),
    };
    let family = match fam_proto >> 4 {
        FAM_UNSPEC => None,
        FAM_INET => Some(Family::Inet),
        FAM_INET6 => Some(Family::Inet6),
        _ => return Err(Malformed::Family),
    };
    match (family, transport) {
        (None, None) => Ok(None),
        (Some(family), Some(transport)) => Ok(Some((family, transport))),
        _ => Err(Malformed::Family),
    }
}

/// IPv4 source, destination and what follows them, or None when `block` is too short.
fn inet(block: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let (src, rest) = block.split_first_chunk::<4>()?;
    let (dst, rest) = rest.split_first_chunk::<4>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, rest) = rest.split_first_chunk::<2>()?;
    let source = SocketAddrV4::new(Ipv4Addr::from(*src), u16::from_be_bytes(*sport));
    let destination = SocketAddrV4::new(Ipv4Addr::from(*dst), u16::from_be_bytes(*dport));
    Some((source.into(), destination.into(), rest))
}

/// IPv6 source, destination and what follows them, or None when `block` is too short.
fn inet6(block: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let (src, rest) = block.split_first_chunk::<16>()?;
    let (dst, rest) = rest.split_first_chunk::<16>()?;
    let (sport, rest) = rest.split_first_chunk::<2>()?;
    let (dport, rest) = rest.split_first_chunk::<2>()?;
    let source = SocketAddrV6::new(Ipv6Addr::from(*src), u16::from_be_bytes(*sport), 0, 0);
    let destination = SocketAddrV6::new(Ipv6Addr::from(*dst), u16::from_be_bytes(*dport), 0, 0);
    Some((source.into(), destination.into(), rest))
}

/// Writes a PROXY-command header for `addrs`, without TLVs, at the start of `out`; returns
/// its length, [`V4_LEN`] or [`V6_LEN`]. When one address is IPv4 and the other IPv6, the
/// IPv4 one is written IPv4-mapped and the header is IPv6. Never allocates; fails only when
/// `out` is too short, and then writes nothing.
pub fn write(addrs: &Addrs, out: &mut [u8]) -> Result<usize, BufferTooShort> {
    let proto = match addrs.transport {
        Transport::Stream => PROTO_STREAM,
        Transport::Datagram => PROTO_DGRAM,
    };
    let ver_cmd = [(VERSION << 4) | CMD_PROXY];
    let (sport, dport) = (
        addrs.source.port().to_be_bytes(),
        addrs.destination.port().to_be_bytes(),
    );
    match (addrs.source, addrs.destination) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            let (src, dst) = (src.ip().octets(), dst.ip().octets());
            fill(
                out,
                &[
                    &SIGNATURE,
                    &ver_cmd,
                    &[(FAM_INET << 4) | proto],
                    &len_bytes(V4_ADDRS),
                    &src,
                    &dst,
                    &sport,
                    &dport,
                ],
            )
        }
        (src, dst) => {
            let (src, dst) = (v6_octets(src), v6_octets(dst));
            fill(
                out,
                &[
                    &SIGNATURE,
                    &ver_cmd,
                    &[(FAM_INET6 << 4) | proto],
                    &len_bytes(V6_ADDRS),
                    &src,
                    &dst,
                    &sport,
                    &dport,
                ],
            )
        }
    }
}

/// [`write`] into a new `Vec`, for tests and tools.
pub fn to_vec(addrs: &Addrs) -> Vec<u8> {
    let mut buf = [0; V6_LEN];
    // V6_LEN holds either form, so this cannot fail; an empty Vec would show it if it did.
    let n = write(addrs, &mut buf).unwrap_or(0);
    buf.get(..n).unwrap_or_default().to_vec()
}

/// Writes a LOCAL header (UNSPEC family, no addresses, length 0) at the start of `out`;
/// returns its length, 16.
pub fn write_local(out: &mut [u8]) -> Result<usize, BufferTooShort> {
    fill(
        out,
        &[
            &SIGNATURE,
            &[(VERSION << 4) | CMD_LOCAL],
            &[(FAM_UNSPEC << 4) | PROTO_UNSPEC],
            &len_bytes(0),
        ],
    )
}

fn v6_octets(addr: SocketAddr) -> [u8; 16] {
    match addr {
        SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(v6) => v6.ip().octets(),
    }
}

/// A header's length field for an address block of `len` (a constant under 2^16) bytes.
fn len_bytes(len: usize) -> [u8; 2] {
    u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes()
}

/// Copies `parts` one after another to the start of `out`, or nothing if they do not fit.
fn fill(out: &mut [u8], parts: &[&[u8]]) -> Result<usize, BufferTooShort> {
    let need = parts.iter().map(|p| p.len()).sum();
    let have = out.len();
    let mut rest = out.get_mut(..need).ok_or(BufferTooShort { need, have })?;
    for part in parts {
        let Some((head, tail)) = std::mem::take(&mut rest).split_at_mut_checked(part.len()) else {
            break;
        };
        head.copy_from_slice(part);
        rest = tail;
    }
    Ok(need)
}

#[cfg(test)]
mod tests;
