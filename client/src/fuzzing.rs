//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus
//! replay test, so both exercise exactly the same code.

use bytes::BytesMut;

use crate::wire::{self, Decoded, Message};

/// Feeds `data` to a frame decoder in chunks (the first byte picks the chunk
/// size), decodes every frame it yields, and checks that every message
/// decoded re-encodes to a frame that decodes to the same message.
pub fn frame_decode(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;
    let mut d = wire::decoder();
    for part in rest.chunks(chunk) {
        d.feed(part);
        loop {
            match d.next_frame() {
                Ok(Some(Decoded::Frame(f))) => {
                    let (kind, id) = (f.header.kind, f.header.request_id);
                    if let Ok(m) = Message::decode(kind, f.body) {
                        round_trip(id, &m);
                    }
                }
                Ok(Some(Decoded::Rejected { request_id, error })) => {
                    let mut out = BytesMut::new();
                    wire::reject(request_id, &error, &mut out);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = d.finish();
}

fn round_trip(id: u64, m: &Message) {
    let mut out = BytesMut::new();
    m.encode(id, &mut out).expect("a decoded message re-encodes");
    let mut d = wire::decoder();
    d.feed(&out);
    match d.next_frame() {
        Ok(Some(Decoded::Frame(f))) => {
            let again = Message::decode(f.header.kind, f.body).expect("re-encoded message decodes");
            assert_eq!(&again, m, "message changed in a round trip");
        }
        other => panic!("re-encoded message did not frame: {other:?}"),
    }
}
