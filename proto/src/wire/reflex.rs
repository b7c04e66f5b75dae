//! The reflex sub-protocol: "what address do you see me at?".
//!
//! | message | length | body |
//! |---|---|---|
//! | [`ReflexRequest`] | 0 | empty: the responder reads the requester's address from the authenticated session |
//! | [`ReflexResponse`] | 19 | one `ADDR`: the requester's address as the responder observed it |
//!
//! Both travel as control-message payloads on an authenticated session; which
//! of the two a payload is follows from the control channel it arrives on, so
//! these messages carry no kind byte.

use core::net::SocketAddr;

use super::{ADDR_LEN, DecodeError, EncodeError, MessageKind, decode_addr, encode_addr};

/// A reflex request: an empty payload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReflexRequest;

impl ReflexRequest {
    /// Encoded length: 0.
    pub const LEN: usize = 0;

    /// Decodes a reflex request; any non-empty payload is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(MessageKind::ReflexRequest, bytes, Self::LEN, "0")?;
        Ok(ReflexRequest)
    }

    /// Encodes into `buf`, returning the number of bytes written (always 0).
    pub fn encode(&self, _buf: &mut [u8]) -> Result<usize, EncodeError> {
        Ok(0)
    }

    /// The encoding as a fixed-size array (empty).
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 0] {
        []
    }
}

/// A reflex response: the address the responder sees the requester at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReflexResponse {
    /// The requester's address as observed by the responder (from the session).
    pub observed: SocketAddr,
}

impl ReflexResponse {
    /// Encoded length: 19.
    pub const LEN: usize = ADDR_LEN;

    /// Decodes a reflex response of exactly 19 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        super::expect_len(MessageKind::ReflexResponse, bytes, Self::LEN, "19")?;
        Ok(ReflexResponse {
            observed: decode_addr(bytes)?,
        })
    }

    /// Encodes into `buf`, returning the number of bytes written.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        super::write_prefix(MessageKind::ReflexResponse, &self.to_bytes(), buf)
    }

    /// The encoding as a fixed-size array.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        encode_addr(&self.observed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_empty() {
        assert_eq!(ReflexRequest::decode(&[]), Ok(ReflexRequest));
        assert!(matches!(
            ReflexRequest::decode(&[0]),
            Err(DecodeError::Length { got: 1, .. })
        ));
        assert_eq!(ReflexRequest.encode(&mut []), Ok(0));
    }

    #[test]
    fn response_layout() {
        let r = ReflexResponse {
            observed: "192.0.2.7:9001".parse().unwrap(),
        };
        let b = r.to_bytes();
        assert_eq!(
            b,
            [
                4, 192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23, 0x29
            ]
        );
        assert_eq!(ReflexResponse::decode(&b), Ok(r));
        let mut small = [0u8; 18];
        assert!(matches!(
            r.encode(&mut small),
            Err(EncodeError::BufferTooSmall {
                needed: 19,
                got: 18,
                ..
            })
        ));
        assert!(ReflexResponse::decode(&[]).is_err());
    }
}
