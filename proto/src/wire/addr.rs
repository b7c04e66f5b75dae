//! The 19-byte address block (`ADDR`) shared by the reflex and rendezvous messages.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | family: `4` = IPv4, `6` = IPv6 |
//! | 1 | 16 | address; IPv4 uses the first 4 bytes, the other 12 are zero |
//! | 17 | 2 | port, big-endian |
//!
//! An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is carried as family 6, exactly
//! as given: the codec does not rewrite addresses (comparisons that must treat the
//! two forms as equal, such as requirement R1, canonicalise at the point of use).
//! IPv6 scope id and flow info are not carried and decode as 0.
//!
//! Non-zero IPv4 padding is rejected with [`DecodeError::Padding`]: honest peers
//! never send it, and rejecting it keeps the encoding canonical.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::{DecodeError, MessageKind, expect_len, field, put};

/// Length of an encoded address block.
pub const ADDR_LEN: usize = 19;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Encodes `addr` as an address block.
#[must_use]
pub fn encode_addr(addr: &SocketAddr) -> [u8; ADDR_LEN] {
    let mut out = [0u8; ADDR_LEN];
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[0] = FAMILY_V4;
            put(&mut out, 1, &ip.octets());
        }
        IpAddr::V6(ip) => {
            out[0] = FAMILY_V6;
            put(&mut out, 1, &ip.octets());
        }
    }
    put(&mut out, 17, &addr.port().to_be_bytes());
    out
}

/// Decodes an address block of exactly [`ADDR_LEN`] bytes.
pub fn decode_addr(bytes: &[u8]) -> Result<SocketAddr, DecodeError> {
    expect_len(MessageKind::Addr, bytes, ADDR_LEN, "19")?;
    let [family] = field::<1>(bytes, 0);
    let octets = field::<16>(bytes, 1);
    let port = u16::from_be_bytes(field(bytes, 17));
    match family {
        FAMILY_V4 => {
            let [a, b, c, d, pad @ ..] = octets;
            if pad != [0; 12] {
                return Err(DecodeError::Padding);
            }
            Ok(SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port))
        }
        FAMILY_V6 => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            port,
            0,
            0,
        ))),
        other => Err(DecodeError::Family(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_layout() {
        let a: SocketAddr = "192.0.2.7:9001".parse().unwrap();
        let b = encode_addr(&a);
        assert_eq!(b[0], 4);
        assert_eq!(&b[1..5], &[192, 0, 2, 7]);
        assert_eq!(&b[5..17], &[0u8; 12]);
        assert_eq!(&b[17..19], &[0x23, 0x29]);
        assert_eq!(decode_addr(&b), Ok(a));
    }

    #[test]
    fn ipv6_layout() {
        let a: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let b = encode_addr(&a);
        assert_eq!(b[0], 6);
        assert_eq!(
            &b[1..17],
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&b[17..19], &[0xff, 0xff]);
        assert_eq!(decode_addr(&b), Ok(a));
    }

    #[test]
    fn ipv4_mapped_stays_family_6() {
        let a: SocketAddr = "[::ffff:192.0.2.7]:1".parse().unwrap();
        let b = encode_addr(&a);
        assert_eq!(b[0], 6);
        assert_eq!(decode_addr(&b), Ok(a));
    }

    #[test]
    fn scope_and_flowinfo_are_not_carried() {
        let a = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7, 99, 3));
        let d = decode_addr(&encode_addr(&a)).unwrap();
        assert_eq!(
            d,
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7, 0, 0))
        );
    }

    #[test]
    fn rejects_bad_family_padding_and_length() {
        let mut b = encode_addr(&"10.0.0.1:5".parse().unwrap());
        b[0] = 5;
        assert_eq!(decode_addr(&b), Err(DecodeError::Family(5)));
        b[0] = 4;
        b[9] = 1;
        assert_eq!(decode_addr(&b), Err(DecodeError::Padding));
        assert!(matches!(
            decode_addr(&b[..18]),
            Err(DecodeError::Length { got: 18, .. })
        ));
        let mut long = [0u8; 20];
        long[0] = 4;
        assert!(matches!(
            decode_addr(&long),
            Err(DecodeError::Length { got: 20, .. })
        ));
    }
}
