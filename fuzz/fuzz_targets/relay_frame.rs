//! Target `relay_frame`: the S3 relay frame decoder never panics, and every
//! frame it accepts re-encodes to exactly its input (canonical decoding).
#![no_main]

use natrix_session::MAX_PAYLOAD;
use natrix_session::relay::{RelayFrame, encode_forward_into, encode_refused};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(frame) = RelayFrame::decode(data) else {
        return;
    };
    let mut out = [0u8; MAX_PAYLOAD];
    let n = frame
        .encode_into(&mut out)
        .expect("a decoded frame encodes");
    assert_eq!(n, frame.encoded_len());
    assert_eq!(&out[..n], data, "non-canonical decode of {frame:?}");
    match frame {
        RelayFrame::Forward { peer, packet } => {
            let m = encode_forward_into(peer, packet, &mut out).expect("re-encode");
            assert_eq!(&out[..m], data);
        }
        RelayFrame::Refused { peer, .. } => {
            let refusal = frame.refusal().expect("a refused frame carries a refusal");
            assert_eq!(&encode_refused(peer, refusal)[..], data);
        }
    }
});
