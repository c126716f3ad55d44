//! Replays the checked-in `frame_decode` fuzz corpus through the fuzz entry
//! point, so CI exercises it without a fuzzer.

#[test]
fn frame_decode_corpus_replays() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/frame_decode");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        felix_client::fuzzing::frame_decode(&data);
        n += 1;
    }
    assert!(
        n >= 34,
        "the corpus holds a frame of every message type ({n} files)"
    );
}
