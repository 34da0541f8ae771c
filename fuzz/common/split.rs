#![allow(dead_code)]
//! Cutting one input into pieces the way a network may: the first byte of a fuzz input
//! seeds the cuts, the rest is the payload. Shared by the targets that check that where
//! the bytes are cut changes nothing.

/// The seed byte and the payload of a fuzz input (`None` for an empty input).
pub fn seed_and_payload(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&seed, payload) = data.split_first()?;
    Some((seed, payload))
}

/// Piece lengths for `len` bytes: 1 to `max` bytes each, chosen by a xorshift seeded with
/// `seed` (so the fuzzer steers the cuts by mutating one byte).
pub fn cuts(seed: u8, len: usize, max: usize) -> Vec<usize> {
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max.max(1)) + 1;
        let n = n.min(left);
        out.push(n);
        left -= n;
    }
    out
}

/// `bytes` as pieces: whole, one byte each, and cut by `seed`.
pub fn splittings(seed: u8, bytes: &[u8]) -> [Vec<&[u8]>; 3] {
    let whole = if bytes.is_empty() {
        vec![]
    } else {
        vec![bytes]
    };
    let single = bytes.chunks(1).collect();
    let mut seeded = Vec::new();
    let mut at = 0;
    for n in cuts(seed, bytes.len(), 1 + usize::from(seed % 64)) {
        seeded.push(&bytes[at..at + n]);
        at += n;
    }
    [whole, single, seeded]
}

/// `text` cut into pieces at char boundaries, by `seed`.
pub fn text_pieces(seed: u8, text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for n in cuts(seed, text.len(), 1 + usize::from(seed % 48)) {
        let mut end = (at + n).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if end > at {
            pieces.push(&text[at..end]);
            at = end;
        }
        if at >= text.len() {
            break;
        }
    }
    pieces
}
