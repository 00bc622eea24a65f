//! The checksum a client keeps of the whole stream it sent and the one it got back.

/// An order-sensitive 64-bit checksum of a byte stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    pub fn update(&mut self, data: &[u8]) {
        let mut h = self.0;
        for chunk in data.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x0100_0000_01B3);
        }
        self.0 = h ^ data.len() as u64;
    }
}
